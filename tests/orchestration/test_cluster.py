"""PPO on a multi-node Ray cluster on one machine: separate raylets and object stores, actors pinned by resources."""

import json
import shutil

import pytest
from cli_runs import SMALL, raylhf

pytestmark = pytest.mark.slow

NODE_TYPES = ("generator_node", "scorer_node", "learner_node")


@pytest.fixture(scope="module")
def cluster():
    """A head node with no CPUs (the driver's) and one worker node per actor type, each with its own
    raylet and object store: nothing placed on one node can read another's objects without a transfer.
    Yields the cluster and `{node id: node type}`."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 150 * 2**20,
                                                      "include_dashboard": False})
    kinds = {c.head_node.node_id: "head"}
    for resource in NODE_TYPES:
        kinds[c.add_node(num_cpus=1, resources={resource: 1}, object_store_memory=150 * 2**20).node_id] = resource
    c.wait_for_nodes()
    yield c, kinds
    c.shutdown()


def _summary(out) -> dict:
    return json.loads(out.stdout.split("[ppo] ", 1)[1].splitlines()[0])


def test_ppo_actors_on_different_nodes_train_and_resume(pipeline_run, cluster, tmp_path):
    cluster, node_kind = cluster
    shutil.copytree(pipeline_run / "data", tmp_path / "multinode" / "data")
    models = pipeline_run / "models"
    command = ["ppo", "--policy", str(models / "sft"), "--rm", str(models / "rm")]
    overrides = [f"output_dir={tmp_path}", "name=multinode", *SMALL, f"ray.address={cluster.address}",
                 "generation.resources={generator_node: 1}", "reward.resources={scorer_node: 1}",
                 "ppo.resources={learner_node: 1}", "generation.num_cpus=1", "reward.num_cpus=1", "ppo.num_cpus=1",
                 "ppo.eval_every=0", "ppo.checkpoint_every=2"]
    summary = _summary(raylhf([*command, *overrides, "ppo.total_steps=4"], cwd=tmp_path))
    placed = {name: node_kind[node_id] for name, node_id in summary["placement"].items()}
    assert placed == {"generator-0": "generator_node", "scorer-0": "scorer_node", "learner": "learner_node"}, placed
    assert summary["steps"] == 4
    # Every snapshot crossed from the learner's object store to the generator's: the generator's engine
    # holds exactly the newest published weights, read back from inside vLLM.
    assert summary["generators_match_learner"] is True
    run = tmp_path / "multinode"
    # The learner's checkpoint came back through the object store; the driver wrote it into the run.
    assert (run / "checkpoints" / "ppo" / "policy" / "config.json").exists()

    # Resume: the checkpoint travels from the driver's node to the learner's through the object store.
    summary = _summary(raylhf([*command, "--resume", *overrides, "ppo.total_steps=6"], cwd=tmp_path))
    assert summary["steps"] == 6 and summary["generators_match_learner"] is True
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if r["stage"] == "ppo" and "reward" in r) == [1, 2, 3, 4, 5, 6]

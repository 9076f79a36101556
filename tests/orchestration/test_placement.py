"""The resource check before the PPO actors start: totals and per-node fit, naming the config keys."""

import pytest

from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.orchestration.actor_set import actor_demands, check_fit

PINNED = RunConfig.model_validate({
    "ray": {"address": "auto"},
    "generation": {"num_generators": 2, "num_cpus": 1.0, "resources": {"generator_node": 1}},
    "reward": {"num_cpus": 1.0, "resources": {"scorer_node": 1}},
    "ppo": {"num_cpus": 2.0, "resources": {"learner_node": 1}},
})
NODES = [{"CPU": 2.0, "generator_node": 2.0}, {"CPU": 1.0, "scorer_node": 1.0}, {"CPU": 2.0, "learner_node": 1.0}]
TOTALS = {"CPU": 5.0, "generator_node": 2.0, "scorer_node": 1.0, "learner_node": 1.0}


def test_demands_per_actor_kind():
    assert actor_demands(PINNED) == [
        ("generation", 2, {"CPU": 1.0, "GPU": 0.0, "generator_node": 1.0}),
        ("reward", 1, {"CPU": 1.0, "GPU": 0.0, "scorer_node": 1.0}),
        ("ppo", 1, {"CPU": 2.0, "GPU": 0.0, "learner_node": 1.0}),
    ]


def test_a_cluster_that_fits_passes():
    check_fit(actor_demands(PINNED), TOTALS, NODES)


def test_missing_custom_resource_names_the_key():
    nodes = NODES[:2] + [{"CPU": 2.0}]
    with pytest.raises(ConfigError) as e:
        check_fit(actor_demands(PINNED), {**TOTALS, "learner_node": 0.0}, nodes)
    msg = str(e.value)
    assert "learner_node: the PPO actors need 1 (1 x ppo.resources.learner_node = 1 x 1) but the Ray cluster has 0" in msg
    assert "ppo: no node has all of one actor's resources" in msg and "ppo.num_cpus, ppo.resources.learner_node" in msg


def test_totals_that_suffice_but_no_single_node_does():
    # 2 CPUs for the learner exist in total, but split over two nodes with the learner resource on neither whole.
    nodes = [{"CPU": 2.0, "generator_node": 2.0}, {"CPU": 1.0, "scorer_node": 1.0},
             {"CPU": 1.0, "learner_node": 1.0}, {"CPU": 1.0}]
    with pytest.raises(ConfigError, match=r"ppo: no node has all of one actor's resources \{'CPU': 2.0, 'learner_node': 1.0\}"):
        check_fit(actor_demands(PINNED), TOTALS, nodes)


def test_cpu_shortfall_sums_every_kind():
    with pytest.raises(ConfigError, match=r"CPU: the PPO actors need 5 \(2 x generation.num_cpus = 2 x 1 \+ "
                                          r"1 x reward.num_cpus = 1 x 1 \+ 1 x ppo.num_cpus = 1 x 2\) but the Ray cluster has 4"):
        check_fit(actor_demands(PINNED), {**TOTALS, "CPU": 4.0}, NODES)

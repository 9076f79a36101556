"""The whole pipeline, shortened, through the CLI: real Ray, real vLLM, real models, real files."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole pipeline, end to end

SMALL = [
    "task.n_train_prompts=300", "task.n_heldout_prompts=40", "task.n_generalization_prompts=40",
    "task.n_pretrain_docs=2000",
    "pretrain.steps=80", "pretrain.batch_size=16", "pretrain.seq_len=64", "pretrain.warmup_steps=10",
    "sft.epochs=2", "collect.n_prompts=150", "collect.k=4", "collect.temperatures=[1.0]",
    "ppo.total_steps=30", "ppo.batch_size=32", "ppo.minibatch_size=16", "ppo.prompts_per_request=16",
    "ppo.lr=1e-3", "ppo.kl_coef=0.02", "ppo.eval_every=15", "ppo.eval_prompts=16", "ppo.max_staleness=2", "ppo.buffer_size=64",
    "eval.n_prompts=24", "eval.rm_eval_prompts=24", "torch_threads=1",
]


def _raylhf(args, cwd):
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    out = subprocess.run([sys.executable, "-m", "raylhf", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=1200, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    _raylhf(["run", f"output_dir={root}", "name=short", *SMALL], cwd=root)
    return root / "short"


def _metrics(run: Path, stage: str):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


def test_pipeline_writes_every_stage(pipeline_run):
    for stage in ("base", "sft", "rm", "ppo"):
        assert (pipeline_run / "models" / stage / "config.json").exists(), stage
    assert (pipeline_run / "config.yaml").exists()
    report = (pipeline_run / "report.md").read_text()
    assert "ppo vs sft" in report and "Reward model" in report
    assert (pipeline_run / "reward_kl.png").exists() and (pipeline_run / "win_rate.png").exists()
    rm_eval = json.loads((pipeline_run / "summaries" / "rm_eval.json").read_text())
    for split in ("heldout", "generalization"):
        s = rm_eval[split]
        assert 0.5 < s["ceiling_accuracy"] <= 1.0, s  # the noiseless utility agrees with its noisy labeler
        for key in ("rm_accuracy", "rm_accuracy_equal_length", "ceiling_accuracy_equal_length",
                    "sft_logprob_accuracy", "sft_logprob_accuracy_equal_length"):
            assert math.isnan(s[key]) or 0.0 <= s[key] <= 1.0, (key, s)
    assert "equal token length" in report
    summary = json.loads((pipeline_run / "summaries" / "eval.json").read_text())
    assert set(summary["policies"]) == {"base", "sft", "ppo"}


def test_async_ppo_properties(pipeline_run):
    ppo = json.loads((pipeline_run / "summaries" / "ppo.json").read_text())
    assert ppo["steps"] == 30
    assert ppo["generators_match_learner"] is True  # read back from inside the vLLM engines
    trained = [r for r in _metrics(pipeline_run, "ppo") if "reward" in r]
    assert max(r["staleness_max"] for r in trained) <= 2  # ppo.max_staleness
    first = sum(r["reward"] for r in trained[:5]) / 5
    last = sum(r["reward"] for r in trained[-5:]) / 5
    assert last > first + 0.05, (first, last)  # the RM score rises (a window of 5 batches has SE ~0.02)


def test_sync_mode_completes_on_the_same_checkpoints(pipeline_run):
    run = pipeline_run
    out = _raylhf(["ppo", "--out", str(run.parent / "ppo_sync"), f"output_dir={run.parent}", "name=short", *SMALL,
                   "ppo.mode=sync", "ppo.total_steps=3", "ppo.eval_every=0"], cwd=run.parent)
    summary = json.loads(out.stdout.split("[ppo] ", 1)[1].splitlines()[0])
    assert summary["steps"] == 3 and summary["generators_match_learner"] is True
    assert set(summary["staleness_histogram"]) == {"0"}  # strictly sequential: always on-policy


def test_ppo_resumes_from_its_checkpoint(pipeline_run, tmp_path):
    # A run interrupted after 2 steps (its last checkpoint) continues to 4 with the learner's state.
    import shutil

    shutil.copytree(pipeline_run / "data", tmp_path / "resumed" / "data")
    models = pipeline_run / "models"
    common = ["--policy", str(models / "sft"), "--rm", str(models / "rm"), f"output_dir={tmp_path}", "name=resumed",
              *SMALL, "ppo.eval_every=0", "ppo.checkpoint_every=1"]
    _raylhf(["ppo", *common, "ppo.total_steps=2"], cwd=tmp_path)
    state_dir = tmp_path / "resumed" / "checkpoints" / "ppo"
    first = json.loads((state_dir / "learner_state.json").read_text())
    assert first["steps"] == 2 and json.loads((state_dir / "driver_state.json").read_text())["steps"] == 2

    out = _raylhf(["ppo", *common, "ppo.total_steps=4", "--resume"], cwd=tmp_path)
    summary = json.loads(out.stdout.split("[ppo] ", 1)[1].splitlines()[0])
    assert summary["steps"] == 4 and summary["rollouts"] == 2 * 32  # two new steps of ppo.batch_size rollouts
    assert summary["generators_match_learner"] is True
    last = json.loads((state_dir / "learner_state.json").read_text())
    assert last["steps"] == 4 and last["version"] > first["version"]  # the learner's own counters carried on
    steps = [r["step"] for r in _metrics(tmp_path / "resumed", "ppo") if "reward" in r]
    assert steps == [1, 2, 3, 4]
    # Nothing left to resume: asking again is a config error naming the key.
    bad = subprocess.run([sys.executable, "-m", "raylhf", "ppo", *common, "ppo.total_steps=4", "--resume"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert bad.returncode == 2 and "ppo.total_steps" in bad.stderr

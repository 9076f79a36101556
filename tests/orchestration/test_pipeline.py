"""The whole pipeline, shortened, through the CLI: real Ray, real vLLM, real models, real files."""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # the whole pipeline, end to end

from cli_runs import SMALL, raylhf as _raylhf  # noqa: E402  (tests/orchestration/conftest.py puts it on the path)

from raylhf.learners.ppo import TIMING_METRICS  # noqa: E402
from raylhf.orchestration import cli  # noqa: E402


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


# A reward function that returns NaN for about a quarter of the rollouts (imported by the scorer actors from the
# repository root, the runs' working directory).
NAN_EVERY_4 = ('reward.sources=[{kind: rm}, {kind: token_function, '
               'path: "tests.reward_service.faulty_rewards:nan_every", kwargs: {every: 4}}]')
QUARANTINE = [NAN_EVERY_4, "ppo.eval_every=0", "reward.reject_rate_min_rollouts=32"]
REPO = Path(__file__).resolve().parents[2]


def test_in_flight_updates_pinned_actors_and_quarantined_rollouts_end_to_end(pipeline_run, tmp_path):
    # The PPO stage runs with loads sent beside the generate calls, its accounting balanced and the generators on
    # the learner's newest weights at the end. Whether a load lands inside a call here depends on timing (calls of
    # a few tens of ms): tests/actors/test_in_flight_updates.py checks the mid-call update itself with a long call.
    # The same run pins generator and scorer to one CPU, the learner to another (the first and last available),
    # and its reward is NaN for a quarter of the rollouts: under a 50 % limit it trains on the rest and writes
    # each reject with its cause.
    first, last = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    args = _ppo_run(pipeline_run, tmp_path, "in_flight", "generation.weight_updates=in_flight", "ppo.total_steps=6",
                    "ppo.buffer_size=256", "ppo.max_staleness=8", *QUARANTINE, "reward.max_reject_rate=0.5",
                    f"generation.cpus=[{first}]", f"reward.cpus=[{first}]", f"ppo.cpus=[{last}]")
    out = _raylhf(args, cwd=REPO)
    summary = json.loads(out.stdout.split("[ppo] ", 1)[1].splitlines()[0])
    assert summary["steps"] == 6 and summary["generators_match_learner"] is True
    assert summary["accounting_balanced"] is True
    learner = [name for name in summary["placement"] if name.startswith("learner")]
    assert len(learner) == 1 and len(summary["cpus"]) == len(summary["placement"]) == 3
    assert {name: cpus for name, cpus in summary["cpus"].items()} == {
        name: ([last] if name in learner else [first]) for name in summary["cpus"]}
    assert 0 <= summary["rollouts_in_flight_updated"] <= summary["rollouts"]
    rows = [r for r in _metrics(tmp_path / "in_flight", "ppo") if "reward" in r]
    assert rows[-1]["rollouts_in_flight_updated"] == summary["rollouts_in_flight_updated"]
    assert summary["samples_rejected"] > 0
    rejects = [json.loads(line) for line in (tmp_path / "in_flight" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) >= summary["samples_rejected"] and {r["cause"] for r in rejects} == {"nonfinite_function_reward"}


def _ppo_run(pipeline_run, root, name, *overrides):
    """Arguments of a `raylhf ppo` on the pipeline's SFT and RM models, in a new run directory."""
    shutil.copytree(pipeline_run / "data", root / name / "data")
    models = pipeline_run / "models"
    return ["ppo", "--policy", str(models / "sft"), "--rm", str(models / "rm"), f"output_dir={root}", f"name={name}",
            *SMALL, *overrides]


# -- interrupted and faulty runs ---------------------------------------------------------------------------

# wall-clock figures: they differ between any two runs
TIMING = {"wall_s", "time", "generator_busy_s", "scorer_busy_s", "learner_busy_s", *TIMING_METRICS}


def _ppo_rows(run: Path) -> dict[int, dict]:
    rows = [r for r in _metrics(run, "ppo") if "reward" in r]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"a step logged twice or out of order: {steps}"
    return {r["step"]: r for r in rows}


def _wait_for(predicate, proc, timeout=600, what=""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _start(args, cwd):
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    return subprocess.Popen([sys.executable, "-m", "raylhf", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _last_row(run: Path) -> dict:
    try:
        rows = _ppo_rows(run)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return rows[max(rows)] if rows else {}


def _actor_pid(proc, class_name: str) -> int:
    """The process of the run's live `class_name` actor (Ray names actor processes `ray::<Class>...`)."""
    import psutil  # installed with vLLM, not a dependency of raylhf: collecting this module must not need it

    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if any(part.startswith(f"ray::{class_name}") for part in child.cmdline()) and child.status() != "zombie":
                return child.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no live {class_name} under the run's process")


def test_killed_run_resumes_to_the_same_weights_and_metrics(pipeline_run, tmp_path, capsys, ray_session):
    # N + M steps in one go == N steps, kill -9 of the whole run, resume, M steps: identical weights
    # (bitwise, on CPU) and identical metrics. Sync mode: async timing decides which version samples what.
    steps = ["ppo.mode=sync", "ppo.eval_every=0", "ppo.checkpoint_every=1", "ppo.total_steps=4"]
    # The uninterrupted run in this process, on the session's Ray; the killed one in a process of its own.
    assert cli.main(_ppo_run(pipeline_run, tmp_path, "straight", *steps)) == 0
    summary = json.loads((tmp_path / "straight" / "summaries" / "ppo.json").read_text())  # sync mode
    assert summary["steps"] == 4 and summary["generators_match_learner"] is True
    assert set(summary["staleness_histogram"]) == {"0"}  # strictly sequential: always on-policy
    killed_args = _ppo_run(pipeline_run, tmp_path, "killed", *steps)
    proc = _start(killed_args, tmp_path)
    run = tmp_path / "killed"
    _wait_for(lambda: _last_row(run).get("step", 0) >= 2, proc, what="step 2")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, Ray and every actor, without a chance to clean up
    proc.wait(timeout=60)
    capsys.readouterr()
    assert cli.main(killed_args) == 2  # refused before anything starts (in this process: no Ray, no actor)
    refused = capsys.readouterr().err
    assert "--resume" in refused and "--fresh" in refused
    _raylhf([*killed_args, "--resume"], cwd=tmp_path)

    a = load_file(tmp_path / "straight" / "models" / "ppo" / "model.safetensors")
    b = load_file(run / "models" / "ppo" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = _ppo_rows(tmp_path / "straight"), _ppo_rows(run)
    assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4]
    for step in straight:
        for key, value in straight[step].items():
            if key not in TIMING and not key.startswith("samples_"):
                assert resumed[step][key] == value, (step, key, value, resumed[step][key])
    # Nothing left to resume: asking again is a config error naming the key.
    assert cli.main([*killed_args, "--resume"]) == 2
    assert "ppo.total_steps" in capsys.readouterr().err


def test_async_run_heals_lost_and_hung_actors_and_finishes(pipeline_run, tmp_path):
    # One run, five faults in turn, each two steps after the last one healed: kill -9 a generator's process,
    # stop (SIGSTOP) a generator past `supervision.call_timeout_s`, kill a scorer, kill the learner, stop the
    # learner. Every one is replaced, and the run finishes every step exactly once.
    total = 16
    args = _ppo_run(pipeline_run, tmp_path, "faults", "ppo.eval_every=0", "ppo.checkpoint_every=2",
                    f"ppo.total_steps={total}", "supervision.call_timeout_s=10")
    proc = _start(args, tmp_path)
    run = tmp_path / "faults"
    stopped = []
    plan = [("GeneratorActor", "generator_restarts", signal.SIGKILL),
            ("GeneratorActor", "generator_restarts", signal.SIGSTOP),
            ("ScorerActor", "scorer_restarts", signal.SIGKILL),
            ("PPOLearnerActor", "learner_restarts", signal.SIGKILL),
            ("PPOLearnerActor", "learner_restarts", signal.SIGSTOP)]
    try:
        for actor_class, counter, sig in plan:
            step, healed = _last_row(run).get("step", 0), _last_row(run).get(counter, 0)
            _wait_for(lambda: _last_row(run).get("step", 0) >= step + 2, proc, what=f"two steps before {actor_class}")
            pid = _actor_pid(proc, actor_class)
            os.kill(pid, sig)
            if sig == signal.SIGSTOP:
                stopped.append(pid)
            _wait_for(lambda: _last_row(run).get(counter, 0) > healed, proc, what=f"{actor_class} replaced")
        out, _ = proc.communicate(timeout=900)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads(out.split("[ppo] ", 1)[1].splitlines()[0])
    assert summary["steps"] == total and summary["generators_match_learner"] is True
    assert summary["accounting_balanced"] is True, summary
    kinds = {(f["actor"].split("-")[0], f["kind"]) for f in summary["faults"]}
    assert {("generator", "died"), ("generator", "timeout"), ("learner", "died"), ("learner", "timeout")} <= kinds, \
        summary["faults"]
    assert summary["scorer_restarts"] >= 1 and summary["generator_restarts"] >= 2 and summary["learner_restarts"] >= 2
    assert sorted(_ppo_rows(run)) == list(range(1, total + 1))  # every step exactly once


def test_a_high_reject_rate_stops_the_run(pipeline_run, tmp_path, ray_session, capsys, monkeypatch):
    # The NaN rewards above, under a 5 % limit: the run stops with one line naming the key (exit status 4). In this
    # process, on the session's Ray, whose workers import the reward function from the working directory.
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    args = _ppo_run(pipeline_run, tmp_path, "strict", *QUARANTINE, "ppo.total_steps=3", "reward.max_reject_rate=0.05")
    assert cli.main(args) == 4
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("run failed:") and "reward.max_reject_rate" in last, last

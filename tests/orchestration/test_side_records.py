"""A finished run is left byte for byte as it was by every stage command whose output is elsewhere and by
every benchmark pointed at it with `--run`; a summary whose model was replaced by hand stops `raylhf run` and
`raylhf iterate` with one line. Real Ray, vLLM and models, on a copy of the shortened pipeline's run and the
shortest settings each command accepts; everything runs in this process (one Ray for all of it)."""

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from cli_runs import SMALL  # noqa: E402  (tests/orchestration/conftest.py puts it on the path)

from raylhf.orchestration import cli
from raylhf.orchestration.provenance import weights_digest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# The PPO shape of the shortened pipeline, without its step counts (each benchmark sets its own).
PPO_SHORT = ["ppo.batch_size=32", "ppo.minibatch_size=16", "ppo.prompts_per_request=16", "ppo.buffer_size=64",
             "ppo.max_staleness=2", "torch_threads=1"]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


@pytest.fixture(scope="module")
def run(pipeline_run, tmp_path_factory):
    """A copy of the finished short run (the session's own is shared with other tests)."""
    run = tmp_path_factory.mktemp("side") / "short"
    shutil.copytree(pipeline_run, run)
    return run


def test_stage_commands_with_outputs_elsewhere_leave_the_run_alone(run, tmp_path):
    before = _hashes(run)
    common = [f"output_dir={run.parent}", "name=short", *SMALL]
    other = tmp_path / "elsewhere"
    other.mkdir()
    demos = _head(run / "data" / "demonstrations.jsonl", tmp_path / "tiny.jsonl", 40)
    pairs = _head(run / "data" / "comparisons.jsonl", tmp_path / "other.jsonl", 40)
    sft, rm, ppo, comparisons = other / "sft", other / "rm", other / "ppo", other / "comparisons.jsonl"
    commands = [
        ["sft", "--data", str(demos), "--out", str(sft), "sft.epochs=1"],
        ["rm", "--data", str(pairs), "--out", str(rm), "rm.epochs=1"],
        ["collect", "--policy", str(sft), "--out", str(comparisons), "collect.n_prompts=4"],
        ["ppo", "--rm", str(rm), "--out", str(ppo), "ppo.total_steps=2", "ppo.eval_every=0"],
        ["rm-eval", "--rm", str(rm), "eval.rm_eval_prompts=4"],
        ["eval", "--policy", "sft", "--policy", f"mine={ppo}", "--rm", str(rm), "eval.n_prompts=4"],
    ]
    for command in commands:
        assert cli.main([command[0], *common, *command[1:]]) == 0, command
    assert _hashes(run) == before

    # Each command's records are beside its output (or the model it scored first that is not the run's).
    records = {stage: out.parent / (out.name + ".records") for stage, out in
               (("sft", sft), ("rm", rm), ("collect", comparisons), ("ppo", ppo), ("rm_eval", rm), ("eval", ppo))}
    for stage, where in records.items():
        summary = json.loads((where / "summaries" / f"{stage}.json").read_text())
        assert (where / "config.yaml").exists(), stage
        if stage in ("sft", "rm", "ppo"):
            out = {"sft": sft, "rm": rm, "ppo": ppo}[stage]
            assert summary["checkpoint"] == {"path": str(out.resolve()), "sha256": weights_digest(out)}
            assert any(json.loads(line)["stage"] == stage for line in (where / "metrics.jsonl").read_text().splitlines())
    assert (records["ppo"] / "checkpoints" / "ppo" / "driver_state.json").exists()
    evaluated = json.loads((records["eval"] / "summaries" / "eval.json").read_text())["evaluated"]
    assert evaluated["sft"]["sha256"] == weights_digest(run / "models" / "sft")
    assert evaluated["mine"]["path"] == str(ppo.resolve())


def _benchmark(name: str, argv: list[str], monkeypatch) -> None:
    """`python benchmarks/<name>.py <argv>`, in this process."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    module.main()


def test_benchmarks_read_the_run_and_never_write_it(run, tmp_path, monkeypatch):
    import ray

    before = _hashes(run)
    # Each with the shortest settings it takes; results go to tmp_path, not benchmarks/results. The config
    # overrides come before the flags that take several values (--modes, --presets, ...), which would take them.
    runs = [
        ("bench_pipeline", [*PPO_SHORT, "--steps", "2", "--modes", "sync"]),
        ("bench_scaling", [*PPO_SHORT, "--steps", "1", "--warmup", "1", "--gen-cpus", "0.5", "--scorer-cpus", "0.5",
                           "--scratch", str(tmp_path / "scaling"), "--presets"]),
        ("bench_soak", ["torch_threads=1", "--steps", "2", "--every", "1000"]),
        ("bench_vs_trl", [*PPO_SHORT, "--steps", "2", "--eval-every", "0", "--eval-prompts", "4", "--threads", "1",
                          "--systems", "async"]),
        ("bench_rm_curves", ["collect.k=4", "eval.rm_eval_prompts=4", "rm.epochs=1", "torch_threads=1", "--unit", "16",
                             "--eval-groups", "1", "--pretrain-steps", "0", "--points", "sft-1x"]),
    ]
    # bench_rm_curves shuts Ray down between sampling and training; the session's other tests share this Ray.
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: None)
    for name, argv in runs:
        out = tmp_path / f"{name}.json"
        _benchmark(name, ["--run", str(run), "--out", str(out), *argv], monkeypatch)
        assert out.exists(), name
        assert _hashes(run) == before, name
    assert not list(tmp_path.glob("scaling/*"))  # the scratch runs are removed with the benchmark


@pytest.mark.parametrize("command", ["run", "iterate"])
def test_a_model_replaced_by_hand_stops_the_report_in_one_line(run, tmp_path, capsys, command):
    copy = tmp_path / "short"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "models" / "ppo")
    shutil.copytree(copy / "models" / "sft", copy / "models" / "ppo")  # another model where the PPO policy was
    report = (copy / "report.md").read_bytes()
    capsys.readouterr()
    assert cli.main([command, f"output_dir={tmp_path}", "name=short", *SMALL, "iterate.rounds=1",
                     "iterate.n_prompts=40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("config error: ") and "Traceback" not in err[0]
    assert f"{copy / 'summaries' / 'ppo.json'} describes the checkpoint {copy / 'models' / 'ppo'}" in err[0]
    assert (copy / "report.md").read_bytes() == report  # no report of another model's numbers
    assert not (copy / "rounds").exists()

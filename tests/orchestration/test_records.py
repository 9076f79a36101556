"""Where a command's records go (`records_for`) and whether a summary still describes the model in place
(`provenance`): the rule and the check, on stand-in checkpoints (no Ray, no models)."""

import json
import shutil
from pathlib import Path

import pytest

from raylhf.configs.loader import ConfigError
from raylhf.orchestration import provenance
from raylhf.orchestration.paths import RunPaths, SidePaths, records_for
from raylhf.orchestration.pipeline import Stages
from raylhf.orchestration.provenance import SummaryMismatch, check_summary, weights_digest
from raylhf.orchestration.report import write_report
from raylhf.orchestration.stages import save_summary


def _checkpoint(path: Path, weights: bytes) -> Path:
    """A stand-in HF checkpoint: the digest reads only the `*.safetensors` bytes."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    return path


def _replace_by_hand(path: Path, weights: bytes) -> None:
    """What a user does: delete the directory and put another model there."""
    shutil.rmtree(path)
    _checkpoint(path, weights)


# -- where records go ------------------------------------------------------------------------------------
def test_the_runs_own_output_keeps_the_runs_records(tmp_path):
    run = RunPaths(tmp_path / "runs" / "demo")
    # Spelt another way (relative through `..`), still the run's own reward model.
    assert records_for(run, [(tmp_path / "runs" / "x" / ".." / "demo" / "models" / "rm", run.model("rm"))]) is run
    assert records_for(run, [(run.model("rm"), run.model("rm")), (run.model("sft"), run.model("sft"))]) is run


def test_an_output_outside_the_run_gets_records_beside_it(tmp_path):
    run = RunPaths(tmp_path / "runs" / "demo", inputs={"demonstrations": tmp_path / "mine.jsonl"})
    side = records_for(run, [(tmp_path / "elsewhere" / "rm", run.model("rm"))])
    assert isinstance(side, SidePaths)
    assert side.root == tmp_path / "elsewhere" / "rm.records"
    # Its records are its own ...
    assert side.stage_summary("rm") == tmp_path / "elsewhere" / "rm.records" / "summaries" / "rm.json"
    assert side.metrics == tmp_path / "elsewhere" / "rm.records" / "metrics.jsonl"
    assert side.config == tmp_path / "elsewhere" / "rm.records" / "config.yaml"
    # ... what it reads is the run's (and your inputs stay yours).
    assert side.prompts("train") == run.prompts("train") and side.corpus("heldout") == run.corpus("heldout")
    assert side.comparisons == run.comparisons and side.seed_comparisons == run.seed_comparisons
    assert side.model("sft") == run.model("sft") and side.demonstrations == tmp_path / "mine.jsonl"
    assert side.run_root == side.root  # its summaries record absolute paths: they are not inside a run


def test_another_output_inside_the_run_directory_is_not_the_runs_either(tmp_path):
    run = RunPaths(tmp_path / "demo")
    side = records_for(run, [(run.root / "models" / "rm2", run.model("rm"))])
    assert side.root == run.root / "models" / "rm2.records"
    # A file output (collect --out) is named the same way.
    assert records_for(run, [(tmp_path / "c.jsonl", run.comparisons)]).root == tmp_path / "c.jsonl.records"


def test_an_evaluation_of_a_model_that_is_not_the_runs_records_beside_the_first_such(tmp_path):
    run = RunPaths(tmp_path / "demo")
    mine = tmp_path / "models" / "mine"
    # `eval --policy sft --policy mine=models/mine`: sft is the run's, `mine` has no counterpart in the run.
    side = records_for(run, [(run.model("sft"), run.model("sft")), (mine, None), (run.model("rm"), run.model("rm"))])
    assert side.root == tmp_path / "models" / "mine.records"
    # `rm-eval --rm elsewhere/rm`: the reward model decides.
    assert records_for(run, [(tmp_path / "rm", run.model("rm")), (run.model("sft"), run.model("sft"))]).root == \
        tmp_path / "rm.records"


# -- what a summary describes ----------------------------------------------------------------------------
def test_the_digest_covers_every_weight_file_and_nothing_else(tmp_path):
    a = _checkpoint(tmp_path / "a", b"weights")
    b = _checkpoint(tmp_path / "b", b"weights")
    assert weights_digest(a) == weights_digest(b) and len(weights_digest(a)) == 64
    (b / "config.json").write_text('{"other": 1}')  # not weights
    assert weights_digest(b) == weights_digest(a)
    (b / "model-2.safetensors").write_bytes(b"")  # one more shard, even an empty one
    assert weights_digest(b) != weights_digest(a)
    _replace_by_hand(a, b"weighty")  # the same size: only the bytes differ
    assert weights_digest(a) != weights_digest(tmp_path / "b") and weights_digest(a) is not None
    assert weights_digest(tmp_path / "missing") is None


def test_paths_inside_the_run_are_recorded_relative_to_it(tmp_path):
    run = RunPaths(tmp_path / "demo")
    sft = _checkpoint(run.model("sft"), b"sft")
    mine = _checkpoint(tmp_path / "mine", b"mine")
    record = provenance.provenance(run, checkpoint=sft, evaluated={"mine": mine, "none": None},
                                   inputs={"data": run.demonstrations, "files": [run.comparisons], "init": None})
    assert record["checkpoint"] == {"path": "models/sft", "sha256": weights_digest(sft)}
    assert record["evaluated"] == {"mine": {"path": str(mine.resolve()), "sha256": weights_digest(mine)}}
    assert record["inputs"] == {"data": {"path": "data/demonstrations.jsonl"},
                                "files": [{"path": "data/comparisons.jsonl"}]}
    # A round's summaries are relative to the run too: its SFT model is the run's.
    assert provenance.provenance(run.round(1), checkpoint=sft)["checkpoint"]["path"] == "models/sft"


def test_a_summary_of_the_model_in_place_passes_and_survives_a_copy_of_the_run(tmp_path):
    run = RunPaths(tmp_path / "demo")
    sft = _checkpoint(run.model("sft"), b"sft")
    summary = save_summary(run, "sft", {"val_loss": 1.0, **provenance.provenance(run, checkpoint=sft)})
    check_summary(run, "sft", summary)
    shutil.copytree(run.root, tmp_path / "copy")
    _replace_by_hand(sft, b"another sft")  # the original changes; the copy keeps its own model
    copy = RunPaths(tmp_path / "copy")
    check_summary(copy, "sft", json.loads(copy.stage_summary("sft").read_text()))


def test_a_model_replaced_by_hand_is_refused_in_one_line_naming_summary_and_checkpoint(tmp_path):
    run = RunPaths(tmp_path / "demo")
    ppo = _checkpoint(run.model("ppo"), b"ppo")
    summary = {"steps": 3, **provenance.provenance(run, checkpoint=ppo)}
    _replace_by_hand(ppo, b"sft's weights copied over ppo")
    with pytest.raises(SummaryMismatch) as e:
        check_summary(run, "ppo", summary)
    message = str(e.value)
    assert isinstance(e.value, ConfigError)  # exit status 2 from the CLI
    assert "\n" not in message
    assert str(run.stage_summary("ppo")) in message and str(run.model("ppo")) in message
    assert weights_digest(ppo)[:12] in message and summary["checkpoint"]["sha256"][:12] in message
    shutil.rmtree(ppo)
    with pytest.raises(SummaryMismatch, match="has no weights any more"):
        check_summary(run, "ppo", summary)


def test_an_evaluation_of_a_replaced_policy_is_refused(tmp_path):
    run = RunPaths(tmp_path / "demo")
    policies = {name: _checkpoint(run.model(name), name.encode()) for name in ("sft", "ppo")}
    summary = {"policies": {}, **provenance.provenance(run, evaluated={**policies, "rm": None})}
    check_summary(run, "eval", summary)
    _replace_by_hand(policies["ppo"], b"other")
    with pytest.raises(SummaryMismatch, match=r"eval\.json describes the checkpoint .*models/ppo"):
        check_summary(run, "eval", summary)


def test_summaries_of_an_older_version_without_hashes_load_as_before(tmp_path):
    run = RunPaths(tmp_path / "demo")
    _checkpoint(run.model("sft"), b"sft")
    check_summary(run, "sft", {"val_loss": 1.0})
    check_summary(run, "sft", {"checkpoint": {"path": "models/sft", "sha256": None}})  # no safetensors then


def test_a_skipped_stage_and_the_report_refuse_a_replaced_model(tmp_path):
    run = RunPaths(tmp_path / "demo")
    sft = _checkpoint(run.model("sft"), b"sft")
    stage = Stages(run, report=lambda *a: None)
    stage("sft", False, lambda: {"seconds": 1.0, **provenance.provenance(run, checkpoint=sft)})
    write_report(run, stage.summaries)  # the summary describes the model in place
    assert run.report.exists()

    _replace_by_hand(sft, b"not the sft the summary describes")
    ran = []
    with pytest.raises(SummaryMismatch, match=r"sft\.json describes"):
        Stages(run, report=lambda *a: None)("sft", True, lambda: ran.append(1) or {})
    assert not ran
    report = run.report.read_text()
    with pytest.raises(SummaryMismatch, match=r"sft\.json describes"):
        write_report(run, stage.summaries)
    assert run.report.read_text() == report  # nothing written over


def test_the_report_checks_each_round_against_its_own_models(tmp_path):
    run = RunPaths(tmp_path / "demo")
    one = run.round(1)
    rm = _checkpoint(one.model("rm"), b"round 1 rm")
    rounds = {1: {"rm": {"seconds": 1.0, **provenance.provenance(one, checkpoint=rm)}}}
    assert rounds[1]["rm"]["checkpoint"]["path"] == "rounds/1/models/rm"
    write_report(run, {}, rounds)
    _replace_by_hand(rm, b"another")
    with pytest.raises(SummaryMismatch, match=r"rounds/1/summaries/rm\.json"):
        write_report(run, {}, rounds)


# -- the commands ----------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sft_and_rm_with_an_output_elsewhere_leave_the_run_alone(tmp_path, tiny_checkpoint):
    """`raylhf sft|rm --out elsewhere/...` after a run: the run's summaries and metrics stay the run's; the
    commands' own go to `<out>.records/`. `--out` at the run's own model replaces the run's records, as before."""
    from raylhf.orchestration import cli

    run = RunPaths(tmp_path / "runs" / "r")
    save_summary(run, "sft", {"val_loss": 9.0})
    run.metrics.write_text('{"stage": "sft", "step": 1}\n')
    demos = _jsonl(tmp_path / "demos.jsonl", [{"prompt_id": f"d{i}", "prompt": f"add {i} and 2",
                                                "response": f" {i + 2}"} for i in range(8)])
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt_id": f"c{i}", "prompt": f"add {i} and 2",
                                               "responses": [f" {i + 2}", " no"], "ranking": [0, 1]} for i in range(8)])
    common = [f"output_dir={run.root.parent}", "name=r", "sft.epochs=1", "rm.epochs=1", "torch_threads=1"]
    before = _tree(run.root)
    sft, rm = tmp_path / "elsewhere" / "sft", tmp_path / "elsewhere" / "rm"
    assert cli.main(["sft", "--model", str(tiny_checkpoint), "--data", str(demos), "--out", str(sft), *common]) == 0
    assert cli.main(["rm", "--model", str(sft), "--data", str(pairs), "--demonstrations", str(demos),
                     "--out", str(rm), *common]) == 0
    assert _tree(run.root) == before
    for out, stage in ((sft, "sft"), (rm, "rm")):
        records = out.parent / f"{stage}.records"
        summary = json.loads((records / "summaries" / f"{stage}.json").read_text())
        assert summary["checkpoint"] == {"path": str(out.resolve()), "sha256": weights_digest(out)}
        assert {json.loads(line)["stage"] for line in (records / "metrics.jsonl").read_text().splitlines()} == {stage}
        assert (records / "config.yaml").exists()
    rm_summary = json.loads((rm.parent / "rm.records" / "summaries" / "rm.json").read_text())
    assert rm_summary["inputs"]["model"] == {"path": str(sft.resolve()), "sha256": weights_digest(sft)}
    assert rm_summary["inputs"]["data"] == [{"path": str(pairs.resolve())}]

    # The run's own output: its records are replaced, as before.
    assert cli.main(["sft", "--model", str(tiny_checkpoint), "--data", str(demos), "--out", str(run.model("sft")),
                     *common]) == 0
    summary = json.loads(run.stage_summary("sft").read_text())
    assert summary["checkpoint"] == {"path": "models/sft", "sha256": weights_digest(run.model("sft"))}
    assert not (run.root / "models" / "sft.records").exists()

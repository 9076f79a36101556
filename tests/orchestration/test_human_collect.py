"""The collect stage under `collect.labeler: human`, without Ray: the sample step writes the batch once, the rank
step turns the labels log into the round's comparisons or stops the command (exit 5, one line) until enough are
in; and tied pairs never count as "w above l" in the evaluation's pair counts."""

import threading
from pathlib import Path

import pytest

from raylhf.configs.loader import load_config
from raylhf.contracts.dataio import read_records, write_records
from raylhf.contracts.records import Comparison, Prompt
from raylhf.labeling import store
from raylhf.orchestration import cli, collect_stage, preflight, sample_and_rank, stages
from raylhf.orchestration.evaluation import pairwise_agreement, ranked_pairs
from raylhf.orchestration.human_rankings import RankingsPending
from raylhf.orchestration.sample_and_rank import Candidates

HUMAN = ["collect.labeler=human", "collect.k=3", "collect.temperatures=[1.0]", "collect.include_seed_comparisons=false"]


def _prompts(n):
    return [Prompt(f"train-{i}", f"p{i}") for i in range(n)]


def _candidates(prompts):
    return [Candidates(p, [f"{p.prompt_id} a", f"{p.prompt_id} bb", f"{p.prompt_id} ccc"],
                       ["sft T=1.0", "sft T=1.0", "base T=0.7"]) for p in prompts]


def _never(*args, **kwargs):
    raise AssertionError("a batch on disk is never sampled again")


def _plan(cfg, out, prompts, r=0):
    return collect_stage.CollectPlan(r, prompts, {"sft": Path("/m/sft")}, [1.0], out,
                                     label_flags=("--round", str(r)) if r else ())


def _rank(log, item, ranks, labeler="local"):
    log.append({"event": "rank", "labeler": labeler, "item_id": item, "ranks": ranks, "shown": [0, 1, 2],
                "likert": [4, 4, 4], "metadata": {}, "note": "", "seconds": 1.0})


def test_the_sample_step_writes_the_batch_once_then_the_labels_become_the_rounds_comparisons(tmp_path, monkeypatch):
    cfg = load_config("tiny", [*HUMAN, f"output_dir={tmp_path}", "name=r"])
    out = tmp_path / "rounds" / "1" / "comparisons.jsonl"
    prompts = _prompts(3)
    monkeypatch.setattr(sample_and_rank, "sample_candidates", lambda *a, **k: _candidates(prompts))
    with pytest.raises(RankingsPending) as pending:
        collect_stage.stage_collect(cfg, _plan(cfg, out, prompts, r=1), labeler=None)
    assert str(pending.value) == (f"round 1 has 0 of 3 items ranked; rank them with: raylhf label "
                                  f"output_dir={tmp_path} name=r --round 1")
    assert not out.exists()
    folder = tmp_path / "rounds" / "1" / "comparisons.labeling"
    batch = store.read_batch(folder)
    assert [(b.item_id, b.round, b.source) for b in batch] == [(f"train-{i}", 1, "sft") for i in range(3)]
    assert batch[0].response_sources == ["sft T=1.0", "sft T=1.0", "base T=0.7"]

    monkeypatch.setattr(sample_and_rank, "sample_candidates", _never)
    log = store.LabelsLog(folder)
    _rank(log, "train-0", [2, 1, 2])  # response 1 best, 0 and 2 tied below it
    _rank(log, "train-1", [1, 2, 3])
    log.append({"event": "undo", "labeler": "local", "item_id": "train-1"})
    with pytest.raises(RankingsPending, match="round 1 has 1 of 3 items ranked"):
        collect_stage.stage_collect(cfg, _plan(cfg, out, prompts, r=1), labeler=None)
    _rank(log, "train-1", [3, 1, 2])
    log.append({"event": "skip", "labeler": "local", "item_id": "train-2", "reason": "unclear", "seconds": 2.0})

    summary = collect_stage.stage_collect(cfg, _plan(cfg, out, prompts, r=1), labeler=None)
    rows, _ = read_records(out, Comparison)
    assert [(c.prompt_id, c.ranking, c.tied, c.labeler, c.round, c.source) for c in rows] == [
        ("train-0", [1, 0, 2], [False, True], "local", 1, "sft"),
        ("train-1", [1, 2, 0], [False, False], "local", 1, "sft")]
    assert {k: summary[k] for k in ("labeler", "items", "rankings", "skipped", "flagged", "labelers", "collected")} == {
        "labeler": "human", "items": 3, "rankings": 2, "skipped": 1, "flagged": 0, "labelers": {"local": 2},
        "collected": 2}


def test_wait_polls_until_enough_are_ranked(tmp_path, monkeypatch):
    cfg = load_config("tiny", [*HUMAN, "label.poll_s=0.05", "label.min_rankings=1"])
    out = tmp_path / "comparisons.jsonl"
    prompts = _prompts(2)
    monkeypatch.setattr(sample_and_rank, "sample_candidates", lambda *a, **k: _candidates(prompts))
    labelling = threading.Timer(0.3, lambda: _rank(store.LabelsLog(store.labeling_dir(out)), "train-1", [1, 1, 2]))
    labelling.start()
    summary = collect_stage.stage_collect(cfg, _plan(cfg, out, prompts), labeler=None, wait=True)
    labelling.join()
    # label.min_rankings = 1: one ranked item of two is enough
    assert (summary["collected"], summary["ranked_items"], summary["tied_rows"]) == (1, 1, 1)
    assert read_records(out, Comparison)[0][0].tied == [True, False]


def test_a_pending_round_is_exit_5_with_the_label_command_on_one_line(tmp_path, monkeypatch, capsys):
    prompts = write_records(tmp_path / "prompts.jsonl", _prompts(2), Prompt)
    monkeypatch.setattr(stages, "resolve_policy", lambda paths, policy, key="": Path("/m") / policy)
    monkeypatch.setattr(preflight, "check_collect_inputs", lambda *a: None)
    monkeypatch.setattr(sample_and_rank, "sample_candidates", lambda cfg, policies, ps, *a, **k: _candidates(ps))
    argv = ["collect", "--prompts", str(prompts), f"output_dir={tmp_path}", "name=r", *HUMAN, "label.port=9000"]
    assert cli.main(argv) == 5
    assert capsys.readouterr().err == (f"waiting for human rankings: round 0 has 0 of 2 items ranked; rank them "
                                       f"with: raylhf label output_dir={tmp_path} name=r label.port=9000\n")
    assert (tmp_path / "r" / "data" / "comparisons.labeling" / "batch.jsonl").is_file()
    # Another output than the run's: `raylhf label` finds its batch by the path.
    side = tmp_path / "side" / "c.jsonl"
    assert cli.main([*argv, "--out", str(side), "--config", "small"]) == 5
    assert capsys.readouterr().err.endswith(f"raylhf label --config small output_dir={tmp_path} name=r --out {side} "
                                            "label.port=9000\n")


def test_tied_pairs_are_no_ranked_pairs_of_the_evaluation():
    # Group 0: 2 > {0 = 1}: pairs (2,0), (2,1) only; group 1: 1 > 0, untied.
    rankings, ties = [[2, 0, 1], [1, 0]], [[False, True], None]
    assert ranked_pairs(rankings, ties) == [(0, 2, 0), (0, 2, 1), (1, 1, 0)]
    # The scores put 1 above 0, which the labeler called equally good: the 3 counted pairs all agree -> 1.0.
    # Counted as "0 above 1", the tied pair would be a disagreement: 3 of 4 -> 0.75.
    scores = [[0.1, 0.9, 1.0], [0.0, 1.0]]
    assert pairwise_agreement(scores, rankings, ties=ties) == 1.0
    assert pairwise_agreement(scores, rankings) == 0.75

"""Iterated RLHF end to end: two rounds after the shortened pipeline's first, through the CLI in this process
(real Ray, real vLLM, real models), ranked by people over the labeling server's HTTP API, with a kill between two
stages of the second."""

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

import pytest

from cli_runs import SMALL  # noqa: E402  (tests/orchestration/conftest.py puts it on the path)
from rank_over_http import rank_batch

from raylhf.configs.loader import load_config
from raylhf.labeling import store
from raylhf.orchestration import cli, eval_stages
from raylhf.tasks import load_task

pytestmark = pytest.mark.slow

ROUNDS = [*SMALL, "iterate.rounds=2", "iterate.n_prompts=40", "iterate.temperatures=[1.0]", "iterate.ppo_steps=4",
          "ppo.eval_every=0", "eval.n_prompts=16", "eval.rm_eval_prompts=16", "collect.labeler=human"]


class Killed(Exception):
    """Stands in for the process dying between two stages."""


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary(run: Path, r: int, stage: str) -> dict:
    return json.loads(((run / "rounds" / str(r)) if r else run).joinpath("summaries", f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def iterated(pipeline_run, tmp_path_factory):
    """The pipeline's run copied, then `raylhf iterate` for two rounds with `collect.labeler=human`: each round's
    collect first stops the command (exit 5) with its batch written, the batch is ranked over HTTP in the task
    labeler's order (one tie, one skip) and the command runs again; killed after round 2's reward model and
    started again. Returns the run, the summaries' mtimes before the restart, the restart's log, what was answered
    per round and the first stop's state of round 1."""
    run = tmp_path_factory.mktemp("iterate") / "short"
    shutil.copytree(pipeline_run, run)
    args = ["iterate", f"output_dir={run.parent}", "name=short", *ROUNDS]
    cfg = load_config(overrides=args[1:])
    ranker = load_task(cfg.task).labeler(cfg.collect.labeler_seed)  # what the simulated rounds would rank by
    real_rm_eval = eval_stages.stage_rm_eval

    def dies_in_round_2(cfg, paths, *a, **kw):
        if paths.root.name == "2":
            raise Killed
        return real_rm_eval(cfg, paths, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(eval_stages, "stage_rm_eval", dies_in_round_2)
    answered, stopped = {}, {}
    for r in (1, 2):  # round 1 stops at its collect; then round 1 finishes and round 2 stops at its collect
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            assert cli.main(args) == 5
        folder = store.labeling_dir(run / "rounds" / str(r) / "comparisons.jsonl")
        stopped[r] = {"stderr": [line for line in stderr.getvalue().splitlines() if line.startswith("waiting for")],
                      "files": sorted(p.name for p in (run / "rounds" / str(r)).iterdir()),
                      "batch": store.read_batch(folder)}
        answered[r] = rank_batch(folder, cfg.label, ranker.rank)
    with pytest.raises(Killed):
        cli.main(args)
    mp.undo()
    assert not (run / "rounds" / "2" / "summaries" / "rm_eval.json").exists()
    before = {p: p.stat().st_mtime_ns for p in run.rglob("summaries/*.json")}
    handler, logger = _Capture(), logging.getLogger("raylhf.orchestration.pipeline")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert cli.main(args) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return run, before, handler.lines, answered, stopped


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_each_round_ranks_the_previous_rounds_policy_on_fresh_prompts(iterated):
    run, *_ = iterated
    first = {c["prompt_id"] for c in _rows(run / "data" / "comparisons.jsonl") if c.get("source") != "seed"}
    seen = set(first)
    for r in (1, 2):
        rows = _rows(run / "rounds" / str(r) / "comparisons.jsonl")
        assert rows and {(c["round"], c["source"]) for c in rows} == {(r, f"round{r - 1}")}
        ids = {c["prompt_id"] for c in rows}
        assert not ids & seen, f"round {r} ranked prompts an earlier round ranked"
        seen |= ids
        assert _summary(run, r, "collect")["collected"] == len(rows) and len(rows) > 30  # of 40 fresh prompts


def test_each_rounds_reward_model_trains_on_every_comparison_so_far(iterated):
    run, *_ = iterated
    counts = {"0": len(_rows(run / "data" / "comparisons.jsonl"))}
    for r in (1, 2):
        counts[str(r)] = len(_rows(run / "rounds" / str(r) / "comparisons.jsonl"))
        rm = _summary(run, r, "rm")
        assert rm["comparisons_by_round"] == {k: v for k, v in counts.items() if int(k) <= r}
        assert rm["train_prompts"] + rm["val_prompts"] == sum(counts.values())
        assert Path(rm["init"]) == run / "models" / "sft"  # iterate.rm_init: sft


def test_each_round_continues_the_previous_policy_with_the_sft_reference(iterated):
    run, *_ = iterated
    for r, previous in ((1, run / "models" / "ppo"), (2, run / "rounds" / "1" / "models" / "ppo")):
        ppo = _summary(run, r, "ppo")
        assert Path(ppo["policy_init"]) == previous and ppo["steps"] == 4
        assert Path(ppo["kl_reference"]) == run / "models" / "sft"
        assert Path(ppo["value_init"]) == run / "rounds" / str(r) / "models" / "rm"
    # The first step of a round is on-policy for a policy that is not SFT: its KL to SFT is where the previous
    # round left it, not the ~0 of round 0's first step.
    def kl(r):
        metrics = run / "rounds" / str(r) / "metrics.jsonl" if r else run / "metrics.jsonl"
        return [m["kl"] for m in _rows(metrics) if m["stage"] == "ppo" and "kl" in m]
    assert abs(kl(0)[0]) < 0.05 * max(kl(0)), kl(0)
    # (A quarter of where round 1 ended, not a half: one asynchronous step's KL varies that much, e.g. 4.7
    # after 9.4.)
    assert kl(2)[0] > 0.25 * kl(1)[-1] > 0, (kl(1), kl(2))


def test_rounds_are_evaluated_and_reported(iterated):
    run, *_ = iterated
    for r in (1, 2):
        ev = _summary(run, r, "eval")
        assert set(ev["policies"]) == {"sft", f"round{r - 1}", f"round{r}"}
        assert {f"round{r}_vs_sft", f"round{r}_vs_round{r - 1}"} <= set(ev["win_rates"]["heldout"])
        rm_eval = _summary(run, r, "rm_eval")
        assert rm_eval["current"]["policy"] == f"round{r - 1}"
        for pairs in (rm_eval["heldout"], rm_eval["current"]["heldout"]):
            assert 0 <= pairs["rm_accuracy"] <= 1
            assert sum(v["pairs"] for v in pairs["by_contrast"].values()) > 0
        assert 0 <= rm_eval["current"]["heldout"]["previous_rm_accuracy"] <= 1  # the RM the previous round trained
    report = (run / "report.md").read_text()
    table = report.split("## Iterated RLHF, per round", 1)[1]
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:4] == ["0", "1", "2"]
    assert (run / "rounds.png").exists()


def test_a_killed_round_resumes_at_the_stage_it_was_in(iterated):
    run, before, log, *_ = iterated
    unchanged = [p for p in before if p.stat().st_mtime_ns == before[p]]
    assert set(unchanged) == set(before), "a finished stage was redone"
    assert {"round 2 stage collect: output exists, skipped", "round 2 stage rm: output exists, skipped",
            "round 1 stage ppo: output exists, skipped", "stage eval: output exists, skipped"} <= set(log)
    for stage in ("rm_eval", "ppo", "eval"):
        assert (run / "rounds" / "2" / "summaries" / f"{stage}.json").exists()


def test_people_rank_each_round_over_http_before_it_goes_on(iterated):
    run, _, _, answered, stopped = iterated
    for r in (1, 2):
        batch = stopped[r]["batch"]
        # The first run of the round wrote its batch and nothing else of the round, and said how to rank it.
        assert stopped[r]["files"] == ["comparisons.labeling"]
        assert stopped[r]["stderr"] == [f"waiting for human rankings: round {r} has 0 of {len(batch)} items ranked; "
                                        f"rank them with: raylhf label output_dir={run.parent} name=short --round {r}"]
        assert {s for b in batch for s in b.response_sources} == {f"round{r - 1} T=1.0"}
        # The round's comparisons are exactly the rankings: the skipped item left out, the tie kept.
        done = answered[r]
        rows = _rows(run / "rounds" / str(r) / "comparisons.jsonl")
        assert [c["prompt_id"] for c in rows] == done.ranked and done.skipped not in done.ranked
        assert {c["labeler"] for c in rows} == {"local"}
        assert [c["prompt_id"] for c in rows if any(c["tied"])] == [done.tied]
        collect = _summary(run, r, "collect")
        assert (collect["labeler"], collect["rankings"], collect["skipped"]) == ("human", len(rows), 1)
    # Each round's reward model trained on every human row so far, ties included.
    rm = [_summary(run, r, "rm") for r in (1, 2)]
    assert [(s["ranked_by_people"], s["with_ties"]) for s in rm] == [
        (len(answered[1].ranked), 1), (len(answered[1].ranked) + len(answered[2].ranked), 2)]

"""The pure pieces of benchmarks/bench_rm_curves.py (and its report module): cutting rankings to K, grouping samples,
clustered errors, the recipe points, the SFT log-prob mix."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from raylhf.contracts.records import Comparison, Prompt
from raylhf.orchestration.evaluation import ranked_pairs

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_rm_curves.py"
_spec = importlib.util.spec_from_file_location("bench_rm_curves", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)
report = sys.modules["rm_curves_report"]  # imported by the benchmark from its own folder


def test_first_k_restricts_the_ranking_to_the_kept_responses():
    rows = [Comparison("p0", "x", ["a", "b", "c", "d"], [3, 1, 0, 2], round=0, source="sft"),
            Comparison("p1", "y", ["e", "f"], [1, 0]),
            Comparison("p2", "z", ["g", "h", "i"], [0, 1, 2])]
    out = bench.first_k(rows, n_prompts=2, k=3)
    # p0 keeps a, b, c; its ranking 3 > 1 > 0 > 2 without d is 1 > 0 > 2. p1 has fewer than 3 and stays whole.
    assert [c.responses for c in out] == [["a", "b", "c"], ["e", "f"]]
    assert [c.ranking for c in out] == [[1, 0, 2], [1, 0]]
    assert (out[0].round, out[0].source) == (0, "sft")
    assert rows[0].responses == ["a", "b", "c", "d"]  # the input is left alone


def test_split_groups_makes_each_group_a_prompt_of_its_own():
    prompts = [Prompt("p0", "x"), Prompt("p1", "y")]
    ps, rs = bench.split_groups(prompts, [["a", "b", "c", "d"], ["e", "f", "g", "h"]], groups=2)
    assert [p.prompt_id for p in ps] == ["p0", "p0", "p1", "p1"]
    assert rs == [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]


def test_clustered_accuracy_by_hand():
    pairs = ranked_pairs([[0, 1, 2], [1, 0]])  # (0>1), (0>2), (1>2) | (1>0)
    scores = [[3.0, 2.0, 1.0], [1.0, 1.0]]  # group 0 agrees on all 3; group 1 ties (half)
    acc, se, n = report.clustered_accuracy(scores, pairs)
    # p = 3.5 / 4 = 0.875; residuals a_g - p n_g: 3 - 2.625 = 0.375, 0.5 - 0.875 = -0.375;
    # se = sqrt(2 * 0.375^2) / 4 = 0.1326.
    assert n == 4
    assert acc == pytest.approx(0.875)
    assert se == pytest.approx(math.sqrt(2 * 0.375**2) / 4, rel=1e-9)
    assert math.isnan(report.clustered_accuracy(scores, [])[0])


def test_plan_keeps_responses_equal_across_k_and_points_shared_between_curves():
    curves = bench.plan(unit=375, k=8, k_unit=192, size_multiples=[1, 8], current_prompts=1000)
    eq = curves["k_equal_responses"]
    assert [(p.k, p.prompts) for p in eq] == [(2, 768), (4, 384), (8, 192)]
    assert {p.k * p.prompts for p in eq} == {1536}
    assert {p.source for p in eq} == {"sft-full"}
    assert [(p.k, p.prompts) for p in curves["k_equal_prompts"]] == [(2, 384), (4, 384), (8, 384)]
    assert [p.prompts for p in curves["data"]] == [375, 750, 1500, 3000]
    assert curves["source"][0] == curves["data"][0]  # 1x of SFT samples is trained once
    assert {p.init for p in curves["size"]} == {"random-tiny", "random-small", "base", "sft"}
    recipe = curves["recipe"]
    assert recipe[0] == curves["data"][-1] and not recipe[0].rm  # the default recipe is the 8x data point
    assert {(p.source, p.prompts, p.k, p.init) for p in recipe} == {("sft", 3000, 8, "sft")}
    assert [p.name for p in recipe if dict(p.rm) == {"epochs": 4, "lr": 1e-3}] == ["sft-8x-ep4-lr0.001"]


def test_point_steps_from_recorded_steps_or_rows_and_recipe():
    assert report.point_steps({"steps": 7, "rows": 100}) == 7
    # 1,978 rows: 197 held out, 1,781 trained; 16 prompts a step: 112 steps an epoch.
    assert report.point_steps({"rows": 1978}) == 112
    assert report.point_steps({"rows": 1978, "rm": {"epochs": 4, "batch_prompts": 4}}) == 4 * 446


def test_logprob_mix_picks_the_weight_that_orders_the_fitting_pairs():
    from raylhf.orchestration.eval_stages import ScoredPairs

    rows = [Comparison("p0", "x", ["a", "b"], [0, 1]), Comparison("p1", "y", ["c", "d"], [1, 0])]
    # The RM orders p0 right by 1.0 and p1 wrong by 0.1; the log-prob orders p1 right by 1.0 and p0 wrong by
    # 0.5. rm + w lp orders both right for 0.1 < w < 2, so the grid's best weight is the first above 0.1
    # (10^(-7/8) = 0.133); the scorer `rm+logprob` is added to every split with that weight.
    fit = ScoredPairs(rows, {"rm": [[1.0, 0.0], [0.1, 0.0]], "sft_logprob": [[0.0, 0.5], [0.0, 1.0]]},
                      [[1, 1], [1, 1]])
    other = ScoredPairs(rows, {"rm": [[0.0, 0.0], [0.0, 0.0]], "sft_logprob": [[2.0, 1.0], [0.0, 1.0]]},
                        [[1, 1], [1, 1]])
    weights = bench.logprob_mixes(fit, {"sft": {"heldout": other}}, ["rm"])
    assert weights["rm"] == pytest.approx(10 ** (-7 / 8))
    assert other.scores["rm+logprob"] == [[pytest.approx(2 * weights["rm"]), pytest.approx(weights["rm"])],
                                          [0.0, pytest.approx(weights["rm"])]]


def test_step_seconds_is_the_median_gap_of_the_stage_rows():
    rows = [{"stage": "pretrain", "time": t} for t in (10.0, 10.5, 11.0, 11.5, 14.0)] + [{"stage": "sft", "time": 0.0}]
    # Gaps 0.5, 0.5, 0.5, 2.5 (the last step's held-out evaluation): the median is 0.5.
    assert bench.step_seconds(rows, "pretrain") == 0.5
    assert math.isnan(bench.step_seconds(rows[:1], "pretrain"))

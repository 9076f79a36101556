"""Iterated RLHF bookkeeping: fresh prompts, policies per round, tags, round paths, the collect stage of every round,
config, contrasts, report."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylhf.configs.loader import ConfigError, explain, load_config
from raylhf.configs.schema import TaskConfig
from raylhf.contracts.dataio import read_records, write_records
from raylhf.contracts.protocols import ContrastingTask
from raylhf.contracts.records import Comparison, Prompt
from raylhf.orchestration import collect_stage, rounds, sample_and_rank
from raylhf.orchestration.evaluation import agreement_by, agreement_table, ranked_pairs
from raylhf.orchestration.paths import RoundPaths, RunPaths
from raylhf.orchestration.pipeline import Stages
from raylhf.orchestration.preflight import check_iterate_prompts
from raylhf.orchestration.report import round_rows, round_section
from raylhf.tasks.demo import build


def _comparison(pid, source="sft", r=0):
    return Comparison(pid, f"Instruction: add 1 and {pid[-1]}\nResponse:", [" 1", " 2"], [0, 1], r, source)


# -- paths --------------------------------------------------------------------------------------------------
def test_round_paths_keep_their_own_files_and_share_the_runs_data(tmp_path):
    run = RunPaths(tmp_path / "demo")
    assert run.round(0) is run
    two = run.round(2)
    assert isinstance(two, RoundPaths) and two.root == tmp_path / "demo" / "rounds" / "2"
    assert two.model("rm") == tmp_path / "demo" / "rounds" / "2" / "models" / "rm"
    assert two.stage_summary("ppo") == tmp_path / "demo" / "rounds" / "2" / "summaries" / "ppo.json"
    assert two.metrics == tmp_path / "demo" / "rounds" / "2" / "metrics.jsonl"
    assert two.comparisons == tmp_path / "demo" / "rounds" / "2" / "comparisons.jsonl"
    assert two.prompts("train") == run.prompts("train") and two.corpus("heldout") == run.corpus("heldout")
    assert two.round(0) == run and two.round(1) == run.round(1)
    assert rounds.comparison_files(run, 2) == [run.comparisons, run.round(1).comparisons, two.comparisons]


# -- fresh prompts, policies, tags ---------------------------------------------------------------------------
def test_fresh_prompts_skip_every_prompt_an_earlier_round_ranked_but_not_seed_rankings():
    prompts = [Prompt(f"train-{i}", f"p{i}") for i in range(8)]
    earlier = [_comparison("train-0"), _comparison("train-2", "round0", 1), _comparison("train-1", rounds.SEED_SOURCE)]
    fresh = rounds.fresh_prompts(prompts, earlier, 3)
    assert [p.prompt_id for p in fresh] == ["train-1", "train-3", "train-4"]  # split order, first n
    assert len(rounds.fresh_prompts(prompts, earlier, 100)) == 6  # fewer when the split runs out


def test_round_policies_name_the_previous_rounds_policy(tmp_path):
    run = RunPaths(tmp_path)
    assert rounds.round_policies(run, 1, ["current"]) == {"round0": run.model("ppo")}
    assert rounds.round_policies(run.round(3), 3, ["current", "sft", "round1"]) == {
        "round2": run.round(2).model("ppo"), "sft": run.model("sft"), "round1": run.round(1).model("ppo")}
    assert rounds.round_policies(run, 2, ["/ckpts/mine"]) == {"mine": Path("/ckpts/mine")}
    with pytest.raises(ConfigError, match=r"iterate\.policies: 'round2' is not a policy round 2 can sample"):
        rounds.round_policies(run, 2, ["round2"])


def test_tags_and_sources():
    rows = rounds.tagged([_comparison("train-0", source="")], 2, rounds.source_tag(["round1", "sft"]))
    assert (rows[0].round, rows[0].source) == (2, "round1+sft")


def test_comparisons_without_round_tags_still_load(tmp_path):
    old = {"prompt_id": "p0", "prompt": "Instruction: add 1 and 2\nResponse:", "responses": [" 3", " 4"],
           "ranking": [0, 1]}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (row,), _ = read_records(path, Comparison)
    assert (row.round, row.source) == (0, "")
    pq.write_table(pa.Table.from_pylist([old]), tmp_path / "old.parquet")  # written before the tags existed
    (row,), _ = read_records(tmp_path / "old.parquet", Comparison)
    assert (row.round, row.source) == (0, "")
    tagged = rounds.tagged([row], 3, "round2")
    write_records(tmp_path / "new.parquet", tagged)
    (back,), _ = read_records(tmp_path / "new.parquet", Comparison)
    assert (back.round, back.source) == (3, "round2")


def test_init_paths_and_the_rounds_ppo_config(tmp_path):
    run = RunPaths(tmp_path)
    cfg = load_config("tiny", ["iterate.ppo_steps=7"])
    assert rounds.rm_init_path(cfg, run, 2) is None  # a fresh head on SFT
    warm = load_config("tiny", ["iterate.rm_init=previous", "iterate.value_init=previous"])
    assert rounds.rm_init_path(warm, run, 2) == run.round(1).model("rm")
    assert rounds.value_init_path(cfg, run, 2) == run.round(2).model("rm")
    with pytest.raises(ConfigError, match=r"iterate\.value_init: 'previous', but round 1 left no PPO checkpoint"):
        rounds.value_init_path(warm, run, 2)
    ckpt = run.round(1).root / "checkpoints" / "ppo"
    ckpt.mkdir(parents=True)
    (ckpt / "driver_state.json").write_text('{"steps": 3}')
    assert rounds.value_init_path(warm, run, 2) == ckpt / "value"
    ppo = rounds.ppo_config(cfg, 2)
    assert ppo.ppo.total_steps == 7 and ppo.seed == cfg.seed + 2
    assert ppo.ppo.model_copy(update={"total_steps": cfg.ppo.total_steps}) == cfg.ppo and ppo.rm == cfg.rm


# -- the collect stage of every round --------------------------------------------------------------------------
class _LongestFirst:
    """A labeler unlike the task's: a stage that ranked with a labeler of its own would show."""

    def rank(self, prompt, responses):
        return sorted(range(len(responses)), key=lambda i: (-len(responses[i]), i))

    def prefer(self, prompt, a, b):
        return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def _checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_round_0_and_later_rounds_collect_through_one_stage_with_the_given_labeler(tmp_path, monkeypatch):
    calls = []

    def sample_each_source(cfg, policies, prompts, n_per_source, temperatures, seed):  # stands in for the generators
        calls.append((list(policies), [p.prompt_id for p in prompts], n_per_source, list(temperatures), seed))
        for name in policies:
            for j, t in enumerate(temperatures):
                yield name, t, [[f"{name} {p.prompt_id} " + "x" * (j * n_per_source + i) for i in range(n_per_source)]
                                for p in prompts]

    monkeypatch.setattr(sample_and_rank, "sample_each_source", sample_each_source)
    cfg = load_config("tiny", ["collect.n_prompts=4", "collect.k=3", "collect.temperatures=[1.0]",
                               "iterate.n_prompts=2", "iterate.temperatures=[0.7, 1.0]", "iterate.samples_per_prompt=4"])
    run = RunPaths(tmp_path)
    write_records(run.prompts("train"), [Prompt(f"train-{i}", f"p{i}") for i in range(8)], Prompt)
    seed = write_records(run.data / "demo_comparisons.jsonl", [_comparison("train-7", rounds.SEED_SOURCE)], Comparison)
    sft = _checkpoint(run.model("sft"))
    _checkpoint(run.model("ppo"))

    plan = collect_stage.first_round_plan(cfg, {"sft": sft}, run.prompts("train"), run.comparisons, seed)
    summary = collect_stage.stage_collect(cfg, plan, _LongestFirst())
    rows, _ = read_records(run.comparisons, Comparison)
    assert [(c.prompt_id, c.round, c.source) for c in rows] == [
        ("train-0", 0, "sft"), ("train-1", 0, "sft"), ("train-2", 0, "sft"), ("train-3", 0, "sft"),
        ("train-7", 0, rounds.SEED_SOURCE)]
    # K = 3 of 1 source: 3 + a spare sample per prompt; the first 3 distinct, longest first.
    assert calls[-1] == (["sft"], ["train-0", "train-1", "train-2", "train-3"], 4, [1.0], cfg.seed)
    assert rows[0].responses == ["sft train-0 ", "sft train-0 x", "sft train-0 xx"] and rows[0].ranking == [2, 1, 0]
    assert (summary["collected"], summary["total"], summary["source"]) == (4, 5, "sft")

    summary = collect_stage.stage_collect(cfg, collect_stage.iteration_round_plan(cfg, run, 1), _LongestFirst())
    rows, _ = read_records(run.round(1).comparisons, Comparison)
    # Fresh prompts (the seed ranking of train-7 does not use it up), the previous round's policy, the round's seed.
    assert calls[-1] == (["round0"], ["train-4", "train-5"], 2, [0.7, 1.0], cfg.seed + 1)
    assert [(c.prompt_id, c.round, c.source) for c in rows] == [("train-4", 1, "round0"), ("train-5", 1, "round0")]
    # 2 samples per temperature, interleaved so the first K mix both temperatures: "", "xx", "x".
    assert rows[0].responses == ["round0 train-4 ", "round0 train-4 xx", "round0 train-4 x"]
    assert rows[0].ranking == [1, 2, 0]
    assert (summary["collected"], summary["total"], summary["source"]) == (2, 7, "round0")

    more = load_config("tiny", ["iterate.n_prompts=3"])
    with pytest.raises(ConfigError, match=r"iterate\.n_prompts: round 2 needs 3 training prompts no earlier round "
                                          r"ranked, only 2 are left"):
        collect_stage.iteration_round_plan(more, run, 2)


# -- config ---------------------------------------------------------------------------------------------------
def test_default_config_runs_one_round():
    assert load_config().iterate.rounds >= 1
    assert any(line.startswith("iterate.rounds = ") for line in explain())


@pytest.mark.parametrize("overrides,needle", [
    (["iterate.rounds=-1"], "iterate.rounds: Input should be greater than or equal to 0"),
    (["iterate.rm_init=warm"], "iterate.rm_init: Input should be 'sft' or 'previous'"),
    (["iterate.value_init=zero"], "iterate.value_init: Input should be 'rm' or 'previous'"),
    (["iterate.policies=[]"], "iterate.policies: Value error, needs at least one entry"),
    (["iterate.temperatures=[-1.0]"], "iterate.temperatures: Value error, temperatures must be >= 0"),
    (["iterate.ppo_steps=0"], "iterate.ppo_steps: Input should be greater than or equal to 1"),
    (["iterate.round=2"], "iterate.round: unknown key; allowed: rounds"),
])
def test_bad_iterate_config_names_the_key(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        load_config("tiny", overrides)
    assert needle in str(exc.value)


def test_a_run_with_more_rounds_than_fresh_prompts_is_refused_before_it_starts():
    check_iterate_prompts(load_config())
    many = ["iterate.rounds=5", "collect.n_prompts=3000"]
    with pytest.raises(ConfigError, match=r"iterate\.n_prompts: 5 rounds x 1000 fresh prompts .* need 8000 training"):
        check_iterate_prompts(load_config("tiny", many))
    check_iterate_prompts(load_config("tiny", [*many, "task.n_train_prompts=8000"]))
    check_iterate_prompts(load_config("tiny", ["iterate.rounds=0", "task.n_train_prompts=20"]))  # no rounds


# -- evaluation by kind of contrast --------------------------------------------------------------------------
def test_agreement_by_label_counts_each_ranked_pair_once():
    # Group 0 ranks [2, 0, 1]: pairs (2>0), (2>1), (0>1); group 1 ranks [1, 0]: pair (1>0).
    pairs = ranked_pairs([[2, 0, 1], [1, 0]])
    assert pairs == [(0, 2, 0), (0, 2, 1), (0, 0, 1), (1, 1, 0)]
    scores = [[0.5, 0.1, 0.9], [0.3, 0.3]]
    # (2>0): 0.9 > 0.5 agrees; (2>1): agrees; (0>1): 0.5 > 0.1 agrees; (1>0): tie, half.
    out = agreement_by(scores, pairs, ["a", "b", "a", "b"])
    assert out == {"a": {"accuracy": 1.0, "pairs": 2}, "b": {"accuracy": 0.75, "pairs": 2}}


def test_agreement_table_puts_scorers_side_by_side_per_label():
    pairs = ranked_pairs([[2, 0, 1], [1, 0]])  # (2>0), (2>1), (0>1) | (1>0)
    scores = {"rm": [[0.5, 0.1, 0.9], [0.3, 0.3]],  # agrees, agrees, agrees | tie (half)
              "flip": [[0.5, 0.9, 1.0], [0.9, 0.3]]}  # agrees, agrees, disagrees | disagrees
    out = agreement_table(scores, pairs, ["b", "a", "a", "b"])
    # Label a = pairs (2>1), (0>1): rm 2/2, flip 1/2; label b = (2>0), (1>0): rm 1.5/2, flip 1/2.
    assert out == {"a": {"pairs": 2, "rm": 1.0, "flip": 0.5}, "b": {"pairs": 2, "rm": 0.75, "flip": 0.5}}
    assert list(out) == ["a", "b"]


def test_demo_task_tells_what_separates_two_responses():
    world = build(TaskConfig())
    assert isinstance(world, ContrastingTask)
    prompt = "Instruction: add 3 and 9\nResponse:"
    assert world.contrast(prompt, " 13", " 7") == "more_vs_less_correct"  # off by one: partial credit
    assert world.contrast(prompt, " 12", " 7") == "correct_vs_wrong"
    assert world.contrast(prompt, " 12", " 12 and then some more words") == "concise_vs_rambling"
    assert world.contrast(prompt, " 12 , ok", " 12 , so") == "equal_utility"
    assert world.contrast(prompt, "", " 7") == "empty_vs_nonempty"
    assert world.contrast(prompt, " 7", " 12") == world.contrast(prompt, " 12", " 7")  # symmetric


# -- report ---------------------------------------------------------------------------------------------------
def _summaries(policy, previous, win, utility, rm_acc, current=None):
    held = {"rm_accuracy": rm_acc, "rm_accuracy_equal_length": rm_acc - 0.1, "ceiling_accuracy": 0.8,
            "sft_logprob_accuracy": 0.6,
            "by_contrast_equal_length": {"correct_vs_wrong": {"pairs": 10, "rm": 0.7, "ceiling": 0.9,
                                                              "sft_logprob": 0.8}}}
    rm_eval = {"heldout": held}
    if current is not None:
        rm_eval["current"] = {"policy": previous, "heldout": dict(held, rm_accuracy=current)}
    return {"collect": {"total": 100, "seconds": 3.0}, "rm_eval": rm_eval, "eval": {
        "n_prompts": {"heldout": 100},
        "win_rates": {"heldout": {f"{policy}_vs_sft": win, f"{policy}_vs_{previous}": win}},
        "policies": {policy: {"heldout": {"utility": utility, "follows": {"all": 0.5}, "mean_words": 3.0},
                              "pretrain_heldout_loss": 1.1},
                     "sft": {"heldout": {"utility": 0.2}}}, "seconds": 5.0}}


def test_report_has_a_row_per_round(tmp_path):
    run = RunPaths(tmp_path)
    run.round(1).root.mkdir(parents=True)
    run.round(1).metrics.write_text("".join(json.dumps({"stage": "ppo", "step": i, "kl": float(i)}) + "\n"
                                            for i in range(1, 13)))
    by_round = {0: _summaries("ppo", "sft", 0.6, 0.4, 0.62), 1: _summaries("round1", "round0", 0.64, 0.5, 0.66, 0.58)}
    rows = round_rows(run, by_round)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["rm_accuracy_current"] == 0.62  # round 0 continues SFT: its current pairs are SFT's
    assert rows[1]["rm_accuracy_current"] == 0.58 and rows[1]["win_vs_previous"] == 0.64
    assert rows[1]["kl"] == pytest.approx(sum(range(3, 13)) / 10)  # the last 10 steps
    assert rows[1]["win_vs_sft_se"] == pytest.approx((0.64 * 0.36 / 100) ** 0.5)
    report = "\n".join(round_section(run, by_round))
    assert "## Iterated RLHF, per round" in report and "0.640 ± 0.048" in report
    assert "correct vs wrong" in report and (tmp_path / "rounds.png").exists()


# -- stage bookkeeping ------------------------------------------------------------------------------------------
def test_a_finished_stage_is_skipped_and_a_redone_ppo_stage_is_evaluated_again(tmp_path):
    reported, ran = [], []
    stage = Stages(RunPaths(tmp_path).round(1), lambda name, s: reported.append(name), label="round 1 ")
    stage("rm", True, lambda: ran.append("rm") or {"seconds": 1.0})  # output there, no summary yet: runs
    stage("rm", True, lambda: ran.append("rm again") or {})  # output and summary: skipped
    stage("rm", False, lambda: ran.append("rm redone") or {})  # output missing: runs again
    assert ran == ["rm", "rm redone"] and reported == ["round 1 rm", "round 1 rm"]
    assert not stage.evaluated()
    stage("ppo", False, lambda: {"steps": 3})
    stage("eval", stage.evaluated(), lambda: {"win_rates": {}})
    assert stage.evaluated()
    ppo = stage.paths.stage_summary("ppo")
    later = stage.paths.stage_summary("eval").stat().st_mtime + 10
    os.utime(ppo, (later, later))  # the PPO stage was redone after the evaluation
    assert not stage.evaluated()

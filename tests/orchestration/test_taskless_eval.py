"""Judging a run without ground truth: the held-out judge reward model's share of the prompts (disjoint from the
run's reward model's, stable across processes), the reward model and an imported ranker as judges, the
evaluation's rows (KL to SFT, tokens, RM score, LM loss) and `report.md` with and without a task. Tiny real
models, no Ray: the evaluation's sampling is the one fake (these tests are about what is computed from the
samples)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from raylhf.configs.loader import ConfigError, load_config
from raylhf.contracts.records import Comparison, Prompt
from raylhf.learners.models import build_causal_lm, load_causal_lm, load_tokenizer
from raylhf.learners.reward_model import reward_head
from raylhf.learners.sft import response_logprobs
from raylhf.orchestration import collect_stage, eval_stages, judge, pipeline, stages
from raylhf.orchestration.evaluation import kl_estimate, win_rate
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import load_format
from raylhf.orchestration.report import write_report

WORDS = ["apple", "banana", "cherry", "red", "cat", "dog", "fox", "one", "two", "three"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _comparison(i: int, round_: int = 0) -> Comparison:
    return Comparison(f"p{i}", f"say {WORDS[i % 10]}", ["a", "b"], [0, 1], round=round_)


# -- the judge's share of the prompts ---------------------------------------------------------------------------
def test_the_judge_share_is_stable_and_disjoint_from_the_reward_models_prompts():
    cfg = load_config("tiny", ["eval.judge=rm", "eval.judge_share=0.2"])
    rows = [_comparison(i) for i in range(2000)] + [_comparison(i, round_=1) for i in range(200)]
    holds, keeps = judge.judge_holds(0.2), judge.rm_keeps(cfg, task=None)
    for c in rows:  # every row is the judge's or the reward model's, never both
        assert holds(c) != keeps(c)
    judged = {c.prompt_id for c in rows if holds(c)}
    trained = {c.prompt_id for c in rows if c.round == 0 and keeps(c)}
    assert judged and not judged & trained
    assert 0.17 < len(judged) / 2000 < 0.23  # the share, up to sampling noise (SE 0.009)
    assert not any(holds(c) for c in rows if c.round == 1)  # a later round's fresh prompts are all trained on
    # A hash of the id, the same in every process and Python version (not the salted built-in `hash`).
    assert [i for i in range(20) if judge.held_for_judge(f"p{i}", 0.2)] == PINNED_JUDGE_IDS
    assert judge.held_for_judge("p3", 0.2) == judge.held_for_judge("p3", 0.2)
    # With the task's labeler as the judge, the reward model trains on everything (the demo run is unchanged).
    assert judge.rm_keeps(load_config("tiny", []), task=object()) is None
    assert judge.judge_kind(load_config("tiny", []), task=object()) == "labeler"
    assert judge.judge_kind(load_config("tiny", []), task=None) == "rm"


PINNED_JUDGE_IDS = [0, 3, 15, 17]


# -- a run without a task, on tiny real models -------------------------------------------------------------------
@pytest.fixture(scope="module")
def taskless_run(tiny_checkpoint, tmp_path_factory):
    """A task-less run directory with SFT (the tiny checkpoint), a `ppo` policy (another tiny model on the same
    tokenizer), the held-out judge reward model and the run's reward model trained by their stages."""
    root = tmp_path_factory.mktemp("taskless")
    prompts = [{"prompt_id": f"q{i}", "prompt": f"say {WORDS[i % 10]} {WORDS[(i * 3) % 10]}"} for i in range(60)]
    files = {
        "prompts": _jsonl(root / "prompts.jsonl", prompts[:40]),
        "heldout": _jsonl(root / "heldout.jsonl", prompts[40:]),
        "demos": _jsonl(root / "demos.jsonl", [{"prompt": p["prompt"], "response": p["prompt"].split()[1]}
                                               for p in prompts[:20]]),
        "pairs": _jsonl(root / "pairs.jsonl", [
            {"prompt_id": p["prompt_id"], "prompt": p["prompt"], "responses": [p["prompt"].split()[1], "no", "dog dog"],
             "ranking": [0, 2, 1]} for p in prompts[:40]]),
        "corpus": _jsonl(root / "corpus.jsonl", [{"text": " ".join(WORDS * 3)} for _ in range(8)]),
    }
    cfg = load_config("tiny", [
        "task.name=none", f"model.path={tiny_checkpoint}", f"data.prompts.train={files['prompts']}",
        f"data.prompts.heldout={files['heldout']}", f"data.demonstrations={files['demos']}",
        f"data.comparisons={files['pairs']}", f"data.pretraining.heldout={files['corpus']}", "iterate.rounds=0",
        "eval.judge_share=0.3", "rm.batch_prompts=8", "pretrain.seq_len=16", "torch_threads=1", "device=cpu"])
    paths = RunPaths.for_config(root / "run", cfg)
    shutil.copytree(tiny_checkpoint, paths.model("sft"))
    ppo = paths.model("ppo")
    build_causal_lm("tiny", load_tokenizer(tiny_checkpoint), max_position_embeddings=256, seed=1).save_pretrained(ppo)
    load_tokenizer(tiny_checkpoint).save_pretrained(ppo)
    summaries = {"judge_rm": judge.stage_judge_rm(cfg, paths)}
    summaries["rm"] = stages.stage_rm(cfg, paths, paths.model("sft"), paths.comparisons, paths.model("rm"),
                                      paths.demonstrations, keep=judge.rm_keeps(cfg, None), keep_key="eval.judge_share")
    return cfg, paths, summaries


def test_the_judge_and_the_reward_model_train_on_disjoint_prompts(taskless_run):
    cfg, paths, summaries = taskless_run
    judged = sum(judge.held_for_judge(f"q{i}", 0.3) for i in range(40))
    j, rm = summaries["judge_rm"], summaries["rm"]
    assert j["train_prompts"] + j["val_prompts"] == judged > 0
    assert rm["train_prompts"] + rm["val_prompts"] == 40 - judged
    assert rm["comparisons_left_out"] == judged and j["comparisons_left_out"] == 40 - judged
    assert 0.0 <= rm["val_accuracy"] <= 1.0 and j["judge_share"] == 0.3
    rows = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"judge_rm", "rm"}  # the judge's training is not logged as the RM's


def test_reward_model_judge_prefers_the_higher_score_and_ranks_by_it(taskless_run):
    cfg, paths, _ = taskless_run
    rm_judge = judge.RewardModelJudge.load(cfg, paths.model(judge.JUDGE_RM))
    responses = ["apple", "no", "dog dog", "cherry red", "two"]
    scores = rm_judge.scores(["say apple"] * 5, responses)
    assert len(set(scores.tolist())) == 5  # a trained head separates them
    assert rm_judge.rank("say apple", responses) == list(np.argsort(-scores))
    for a in range(5):
        for b in range(5):
            want = 0.5 if a == b else float(scores[a] > scores[b])
            assert rm_judge.prefer("say apple", responses[a], responses[b]) == want
    # A record keeps its conversation; as text the same single-turn prompt scores the same.
    assert rm_judge.scores([Prompt("x", "say apple")], ["two"])[0] == pytest.approx(scores[4], abs=1e-5)
    # A constant reward (head weights zero): every pair ties.
    head = reward_head(rm_judge.rm)
    with torch.no_grad():
        saved = head.weight.clone()
        head.weight.zero_()
        assert rm_judge.prefer("say apple", "apple", "no") == 0.5 and rm_judge.rank("say apple", ["a", "b"]) == [0, 1]
        head.weight.copy_(saved)


def test_taskless_evaluation_rows_and_report(taskless_run, monkeypatch):
    cfg, paths, summaries = taskless_run
    policies = {"sft": paths.model("sft"), "ppo": paths.model("ppo")}
    heldout = [Prompt(f"q{i}", f"say {WORDS[i % 10]} {WORDS[(i * 3) % 10]}") for i in range(40, 60)]
    samples = {"sft": [p.prompt.split()[1] for p in heldout], "ppo": ["dog dog fox" for _ in heldout]}

    def fake_sampling(cfg_, policies_, by_split, spec):
        assert list(by_split) == ["heldout"]  # your data has no generalization split
        return {name: {"heldout": samples[name]} for name in policies_}

    monkeypatch.setattr(eval_stages, "sample_splits", fake_sampling)
    ev = eval_stages.stage_eval(cfg, paths, policies, paths.model("rm"))
    assert ev["judge"] == f"rm:{paths.model(judge.JUDGE_RM)}" and ev["n_prompts"] == {"heldout": 20}
    sft, ppo = ev["policies"]["sft"], ev["policies"]["ppo"]
    assert "utility" not in ppo["heldout"] and "follows" not in ppo["heldout"]
    fmt = load_format(cfg, paths.model("ppo"))
    assert ppo["heldout"]["mean_tokens"] == np.mean([len(fmt.response_ids("dog dog fox", end=False))])
    assert ppo["heldout"]["mean_words"] == 3.0
    assert sft["heldout"]["kl_to_sft"] == 0.0
    # KL to SFT on ppo's own samples: log π_ppo(y) − log π_sft(y) summed over the response, averaged over prompts.
    examples = [(fmt.prompt_ids(p), fmt.response_ids(t)) for p, t in zip(heldout, samples["ppo"])]
    lp = [response_logprobs(load_causal_lm(policies[n], "cpu"), examples, fmt.tokenizer.pad_token_id,
                            torch.device("cpu")) for n in ("ppo", "sft")]
    assert ppo["heldout"]["kl_to_sft"] == pytest.approx(kl_estimate(*lp), rel=1e-6)
    assert all(np.isfinite(ev["policies"][n]["heldout"]["rm_score"]) for n in policies)
    assert all(np.isfinite(ev["policies"][n]["pretrain_heldout_loss"]) for n in policies)
    # The judge's batched win rate is its `prefer`, prompt by prompt (the protocol's path).
    rm_judge = judge.RewardModelJudge.load(cfg, paths.model(judge.JUDGE_RM))
    assert ev["win_rates"]["heldout"]["ppo_vs_sft"] == win_rate(rm_judge, heldout, samples["ppo"], samples["sft"])

    report = write_report(paths, {**summaries, "sft": {"skipped_rows": {}}, "eval": ev}).read_text()
    assert "judge reward model" in report and "ppo vs sft" in report and " ± " in report
    for absent in ("true utility", "follows", "generalization", "labeler", "None"):
        assert absent not in report, absent
    for present in ("KL to SFT", "RM score (held-out)", "mean tokens per response", "LM loss on held-out",
                    f"pairwise accuracy {summaries['rm']['val_accuracy']:.3f} on held-out comparisons"):
        assert present in report, present
    assert "Skipped rows" not in report


def test_kl_estimate_worked_example():
    # Two samples: log π − log π_ref = (-1.0 - -1.5) = 0.5 and (-2.0 - -1.0) = -1.0; mean -0.25.
    assert kl_estimate([-1.0, -2.0], [-1.5, -1.0]) == pytest.approx(-0.25)
    assert np.isnan(kl_estimate([], []))


# -- a ranker by import path -------------------------------------------------------------------------------------
RANKER = '''
class Shorter:
    """Prefers the shorter response."""
    def __init__(self, seed):
        self.seed = seed
    def rank(self, prompt, responses):
        return sorted(range(len(responses)), key=lambda i: len(responses[i]))
    def prefer(self, prompt, a, b):
        return 1.0 if len(a) < len(b) else 0.0 if len(a) > len(b) else 0.5

def build(seed):
    return Shorter(seed)

def not_a_labeler(seed):
    return object()
'''


def test_a_ranker_by_import_path_judges_and_a_bad_one_names_eval_judge(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "taskless_eval_ranker.py").write_text(RANKER)
    cfg = load_config("tiny", ["eval.judge=taskless_eval_ranker:build", "eval.labeler_seed=7"])
    ranker, name = judge.load_judge(cfg, RunPaths(tmp_path), task=None)
    assert name == "taskless_eval_ranker:build" and ranker.seed == 7  # built with eval.labeler_seed
    prompts = [Prompt(f"p{i}", "q") for i in range(4)]
    wins = judge.judge_win_rates(ranker, prompts, {"sft": ["aa", "a", "aaa", "b"], "ppo": ["a", "aa", "a", "c"]})
    assert wins == {"ppo_vs_sft": pytest.approx((1 + 0 + 1 + 0.5) / 4)}
    for path, why in (("no_such_module_xyz:build", "cannot import module"),
                      ("taskless_eval_ranker:missing", "no attribute"),
                      ("taskless_eval_ranker:not_a_labeler", "lacks the Labeler methods")):
        with pytest.raises(ConfigError, match=f"^eval.judge: .*{why}"):
            judge.load_judge(load_config("tiny", [f"eval.judge={path}"]), RunPaths(tmp_path), task=None)
    with pytest.raises(ConfigError, match="^eval.judge: cannot import"):  # before any stage of a run
        judge.check_judge(load_config("tiny", ["eval.judge=no_such_module_xyz:f"]), RunPaths(tmp_path), None, True)
    with pytest.raises(ConfigError, match="eval.judge.*none of auto, labeler, rm"):
        load_config("tiny", ["eval.judge=someone"])


def test_a_held_out_judge_needs_comparisons(tmp_path):
    cfg = load_config("tiny", ["eval.judge=rm"])
    with pytest.raises(ConfigError, match="^eval.judge: 'rm' .*data.comparisons"):
        judge.check_judge(cfg, RunPaths(tmp_path), None, has_comparisons=False)
    assert judge.check_judge(load_config("tiny", []), RunPaths(tmp_path), None, has_comparisons=False) is None
    with pytest.raises(ConfigError, match="^eval.judge: 'rm', but there is no held-out judge reward model"):
        judge.load_judge(cfg, RunPaths(tmp_path), task=None)
    assert judge.load_judge(load_config("tiny", []), RunPaths(tmp_path), task=None) == (None, None)


# -- which stages a run has --------------------------------------------------------------------------------------
def _stage_plan(monkeypatch, cfg, root: Path) -> list[tuple[str, bool]]:
    """The stages `run_pipeline` runs for `cfg`, each with whether its reward model filters comparisons; every
    stage is a stand-in that records its call (the stages themselves are tested on their own)."""
    calls: list[tuple[str, bool]] = []

    def fake(name):
        def run(*args, **kwargs):
            calls.append((name, kwargs.get("keep") is not None))
            return {"seconds": 0.0}
        return run

    for module, fn in ((stages, "stage_data"), (stages, "stage_pretrain"), (stages, "stage_sft"),
                       (stages, "stage_rm"), (collect_stage, "stage_collect"), (eval_stages, "stage_rm_eval"),
                       (eval_stages, "stage_eval"), (judge, "stage_judge_rm"), (pipeline, "ppo_resuming")):
        monkeypatch.setattr(module, fn, fake(fn.removeprefix("stage_")))
    monkeypatch.setattr(collect_stage, "first_round_plan", lambda *a, **k: None)
    monkeypatch.setattr(stages, "resolve_policy", lambda *a, **k: Path("x"))
    monkeypatch.setattr(eval_stages, "eval_policies", lambda *a, **k: {})
    monkeypatch.setattr(pipeline, "write_report", lambda *a, **k: None)  # of real summaries: tested below
    pipeline.run_pipeline(cfg, RunPaths.for_config(root, cfg), report=lambda name, s: None)
    return calls


def test_the_demo_run_keeps_its_stages_and_a_taskless_run_gains_the_judge(monkeypatch, tmp_path):
    demo = _stage_plan(monkeypatch, load_config("tiny", ["iterate.rounds=0"]), tmp_path / "demo")
    assert demo == [("data", False), ("pretrain", False), ("sft", False), ("collect", False), ("rm", False),
                    ("rm_eval", False), ("ppo_resuming", False), ("eval", False)]
    files = ["task.name=none", "model.path=m", "data.prompts.train=t", "data.prompts.heldout=h",
             "data.demonstrations=d", "data.comparisons=c", "iterate.rounds=0"]
    taskless = _stage_plan(monkeypatch, load_config("tiny", files), tmp_path / "taskless")
    assert taskless == [("sft", False), ("judge_rm", False), ("rm", True), ("ppo_resuming", False), ("eval", False)]
    # The task's run with the held-out reward model as its judge: the judge trains first, the RM without its prompts.
    judged = _stage_plan(monkeypatch, load_config("tiny", ["iterate.rounds=0", "eval.judge=rm"]), tmp_path / "judged")
    assert [c for c in judged if c[0] in ("collect", "judge_rm", "rm")] == [
        ("collect", False), ("judge_rm", False), ("rm", True)]


# -- report.md with a task ---------------------------------------------------------------------------------------
def test_the_report_of_a_task_run_keeps_its_rows_and_lists_skipped_rows(tmp_path):
    policy = {"heldout": {"utility": 0.9, "follows": {"all": 0.7, "add": 0.8}, "mean_words": 3.0, "mean_tokens": 4.0,
                          "rm_score": 0.1, "kl_to_sft": 1.5},
              "generalization": {"utility": 0.5, "follows": {"all": 0.4}, "mean_words": 2.0},
              "pretrain_heldout_loss": 2.2}
    ev = {"policies": {"sft": policy, "ppo": policy}, "n_prompts": {"heldout": 100, "generalization": 100},
          "win_rates": {"heldout": {"ppo_vs_sft": 0.6}, "generalization": {"ppo_vs_sft": 0.55}}, "seconds": 3.0}
    rm_eval = {s: {"rm_accuracy": 0.6, "ceiling_accuracy": 0.8, "rm_vs_ceiling": 0.75, "sft_logprob_accuracy": 0.6}
               for s in ("heldout", "generalization")}
    summaries = {"sft": {"skipped_rows": {"d.jsonl": {"bad json": 2}}, "seconds": 1.0},
                 "rm": {"val_accuracy": 0.62, "val_pairs": 40.0, "val_prompts": 10, "train_prompts": 90,
                        "skipped_rows": {"d.jsonl": {"bad json": 2}, "c.jsonl": {"ranking | not a permutation": 1}}},
                 "rm_eval": rm_eval, "eval": ev}  # an eval summary from before judges were named: the labeler's
    report = write_report(RunPaths(tmp_path), summaries).read_text()
    assert "Judge: the task's labeler of eval.labeler_seed" in report
    assert "| ppo vs sft | 0.600 ± 0.049 | 0.550 ± 0.050 |" in report
    for present in ("true utility (held-out)", "true utility (generalization)", "follows: add", "KL to SFT",
                    "pairwise accuracy 0.620 on held-out comparisons (40 pairs of 10 prompts)",
                    "against the labeler on held-out prompts"):
        assert present in report, present
    skipped = report.split("## Skipped rows", 1)[1]
    assert "| `d.jsonl` | bad json | 2 | sft, rm |" in skipped
    assert "| `c.jsonl` | ranking \\| not a permutation | 1 | rm |" in skipped

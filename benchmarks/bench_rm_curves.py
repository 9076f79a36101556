"""What the demo reward model learns, and what moves it: held-out pairwise accuracy against the simulated
labeler as a function of comparison data, K, initialisation, model size and which policy's samples it ranks.

Every reward model here is trained by the pipeline's own `rm` stage (`stage_rm`: InstructGPT's K-wise loss,
the config's `rm.*`, one epoch, `rm.val_fraction` of the prompts kept out) on a slice of a finished run's
rankings, so no labels are collected and the points differ only in what the curve varies:

- **data**: 1x, 2x, 4x, 8x of the round-0 rankings of SFT samples (`data/comparisons.jsonl`, rows of
  source `sft`: up to K = 8 distinct responses per prompt, fewer where the policy repeats itself), 1x =
  `--unit` prompts (375: the demo's ~3,000 round-0 prompts are 8x);
- **K**: the first K of each prompt's ranked responses with the ranking restricted to them (what the labeler
  gives when shown those K: its ranking is a sort by a per-response score), cut from the rows that have all
  8 (so every K sees the same kind of prompt): K = 2, 4, 8 at an equal number of ranked responses
  (`--k-unit` 192 x 8 = 1,536; equal compute, a step costs one forward pass per response) and at an equal
  number of prompts (384);
- **init**: round 1's rankings of the current policy's samples (`rounds/1/comparisons.jsonl`), as a fresh
  head on SFT and continuing the run's round-0 reward model (`iterate.rm_init: previous`);
- **size**: a `tiny` and a `small` (configs/small.yaml) reward model both initialised at random (no `small`
  SFT checkpoint exists), on the same rankings, next to `tiny` from the base model and from SFT (what
  pretraining and SFT give the reward model); and the measured cost of
  pretraining the `small` base model (`stage_pretrain`, a few steps of each preset, scaled to
  `pretrain.steps`);
- **source**: 1x of the SFT samples' rankings against 1x of round 1's (samples of round 0's PPO policy);
- **recipe**: the `rm` section's optimiser on 8x (`RECIPES`): learning rate, the head's learning rate as a
  multiple of the trunk's (`rm.head_lr_scale`; a trunk at 1e-7 is a linear probe of SFT's features), prompts
  per step and epochs, so from 1/4 to 16 times the default's optimiser steps.

`--score NAME=PATH` scores reward models trained elsewhere (`raylhf rm --data ... --out ...`: other labels, other
SFT models) on the same pairs; `--logprob-mix` adds, for every reward model, the scorer `NAME+logprob` =
its score + w x the SFT log-prob, w fitted on round 1's rankings (the SFT log-prob as a reward-model feature,
measured without training one); `--plot RESULTS...` draws the recipe curve (accuracy against optimiser steps).

All of them, and the run's own reward models, are scored on the same held-out pairs by the `rm-eval` stage's
scorer (`score_pairs`, `pair_accuracies`): per held-out prompt (`heldout` and `generalization`,
`eval.rm_eval_prompts` each) `--eval-groups` independent groups of K + 1 samples at temperature 1 from SFT and
from round 0's PPO policy (the policy round 1 continues), ranked by the collection labeler; overall, on
equal-length pairs and per kind of contrast, next to the ceiling (the noiseless utility) and the SFT
log-prob, plus the equal-length accuracy per instruction family. `±` is a standard error clustered by
group (pairs of one group share responses).

The run is only read: everything is measured in a scratch copy of the parts it reads (`scratch.scratch_run`).

    .venv/bin/python benchmarks/bench_rm_curves.py --run runs/demo
    .venv/bin/python benchmarks/bench_rm_curves.py --run runs/demo --points sft-1x   # time one point
    .venv/bin/python benchmarks/bench_rm_curves.py --run runs/demo --points sft-8x sft-8x-ep4 --logprob-mix
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is used before Ray forks workers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `scratch` also when this file is loaded by path

from rm_curves_report import SPLITS, plot_steps, report  # noqa: E402
from scratch import run_overrides, scratch_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# What the curves read of a finished run: copied into the scratch run they are measured in.
READS = ["data", "models/base", "models/sft", "models/rm", "models/ppo", "summaries", "rounds/1/comparisons.jsonl",
         "rounds/1/models/rm"]
SOURCES = ("sft", "current")  # round 0's SFT samples, round 1's samples of the current policy


@dataclasses.dataclass(frozen=True)
class Point:
    """One reward model: `prompts` x the first `k` responses of `source`'s rankings, trained from `init`
    (`sft`; `base`: the pretrained model before SFT; `previous`: the run's round-0 reward model; `random-tiny`,
    `random-small`: a randomly initialised model of that preset)."""

    name: str
    source: str
    prompts: int
    k: int
    init: str = "sft"
    rm: tuple[tuple[str, float], ...] = ()  # `rm.*` overrides of this point (the recipe curve): (key, value)


def plan(unit: int, k: int, k_unit: int, size_multiples: Sequence[int], current_prompts: int
         ) -> dict[str, list[Point]]:
    """The points of every curve (a point may sit on several curves; it is trained once). The K curves cut
    the rows that have all `k` responses (`sft-full`), so every K sees the same kind of prompts: at `k_unit`
    x `k` ranked responses, and at 2 x `k_unit` prompts."""
    sft = {m: Point(f"sft-{m}x", "sft", m * unit, k) for m in (1, 2, 4, 8)}
    ks = sorted({kk for kk in (2, 4) if kk < k} | {k})
    return {
        "data": list(sft.values()),
        "k_equal_responses": [Point(f"k{kk}-{k_unit * k // kk}p", "sft-full", k_unit * k // kk, kk) for kk in ks],
        "k_equal_prompts": [Point(f"k{kk}-{2 * k_unit}p", "sft-full", 2 * k_unit, kk) for kk in ks],
        "init": [Point("current-all-fresh", "current", current_prompts, k),
                 Point("current-all-warm", "current", current_prompts, k, "previous")],
        "size": [p for m in size_multiples for p in (
            Point(f"random-tiny-{m}x", "sft", m * unit, k, "random-tiny"),
            Point(f"random-small-{m}x", "sft", m * unit, k, "random-small"),
            Point(f"base-tiny-{m}x", "sft", m * unit, k, "base"), sft[m])],
        "source": [sft[1], Point("current-1x", "current", unit, k)],
        "recipe": [sft[8], *(Point(recipe_name(r), "sft", 8 * unit, k, rm=r) for r in RECIPES)],
    }


# The recipe curve: the `rm` section's optimiser settings on all of round 0's rankings (8x), from SFT.
RECIPES: tuple[tuple[tuple[str, float], ...], ...] = (
    (("lr", 1e-3),),
    (("lr", 3e-3),),
    (("batch_prompts", 4),),
    (("batch_prompts", 4), ("lr", 1e-3)),
    (("epochs", 4),),
    (("epochs", 4), ("lr", 1e-3)),
    (("epochs", 4), ("lr", 1e-3), ("batch_prompts", 4)),
    (("head_lr_scale", 10),),
    (("head_lr_scale", 30),),
    (("lr", 1e-7), ("head_lr_scale", 30000)),  # a linear probe of SFT's features (the trunk all but frozen)
)


def recipe_name(rm: Sequence[tuple[str, float]]) -> str:
    short = {"lr": "lr", "epochs": "ep", "batch_prompts": "bp", "head_lr_scale": "head"}
    return "sft-8x-" + "-".join(f"{short.get(k, k)}{v:g}" for k, v in rm)


def first_k(comparisons: Sequence, n_prompts: int, k: int) -> list:
    """The first `n_prompts` rows, each cut to its first `k` responses with the ranking restricted to them
    (order kept: the labeler ranks a subset as it ranks the whole, by its per-response score)."""
    out = []
    for c in comparisons[:n_prompts]:
        keep = min(k, len(c.responses))
        positions = [p for p, i in enumerate(c.ranking) if i < keep]
        # Two kept neighbours are tied when everything ranked between them was tied too (ties chain).
        tied = None if c.tied is None else [all(c.tied[a:b]) for a, b in zip(positions, positions[1:])]
        if tied is not None and all(tied):
            continue  # the kept responses are all tied: no pair to train on
        out.append(dataclasses.replace(c, responses=list(c.responses[:keep]),
                                       ranking=[c.ranking[p] for p in positions], tied=tied))
    return out


def split_groups(prompts: Sequence, responses: Sequence[Sequence[str]], groups: int) -> tuple[list, list[list[str]]]:
    """Each prompt's samples cut into `groups` consecutive groups of equal size, each group a prompt of its own
    (independent draws: more held-out pairs from the same prompts)."""
    out_prompts, out_responses = [], []
    for p, rs in zip(prompts, responses, strict=True):
        size = len(rs) // groups
        for g in range(groups):
            out_prompts.append(p)
            out_responses.append(list(rs[g * size : (g + 1) * size]))
    return out_prompts, out_responses


# ------------------------------------------------------------------------------------------------ steps
def load_rankings(cfg, paths) -> dict[str, list]:
    """The run's rankings per source: round 0's of SFT samples (`sft`, the task's seed rankings left out; `sft-full`:
    those with all K distinct responses) and round 1's (`current`)."""
    from raylhf.contracts.dataio import read_records
    from raylhf.contracts.records import Comparison
    from raylhf.orchestration.rounds import SEED_SOURCE

    rows, _ = read_records(paths.comparisons, Comparison)
    out = {"sft": [c for c in rows if c.source != SEED_SOURCE]}
    out["sft-full"] = [c for c in out["sft"] if len(c.responses) == cfg.collect.k]
    if paths.round(1).comparisons.exists():
        out["current"], _ = read_records(paths.round(1).comparisons, Comparison)
    return out


def eval_pairs(cfg, paths, task, fmt, sft, current: dict, groups: int, device) -> dict[str, dict[str, Any]]:
    """Held-out groups of K samples per source and split, ranked and scored by the baselines."""
    from raylhf.contracts.dataio import read_records
    from raylhf.contracts.records import Prompt
    from raylhf.orchestration.eval_stages import score_pairs
    from raylhf.orchestration.sample_and_rank import sample_sources

    labeler = task.labeler(cfg.collect.labeler_seed)
    k, n = cfg.collect.k, cfg.eval.rm_eval_prompts
    by_split = {split: read_records(paths.prompts(split), Prompt)[0][:n] for split in SPLITS}
    everything = [p for ps in by_split.values() for p in ps]
    policies = {"sft": paths.model("sft"), **current}
    # `rm-eval`'s sampling seed and temperature.
    sampled = sample_sources(cfg, policies, everything, groups * (k + 1), [1.0], cfg.seed + 7)
    out: dict[str, dict[str, Any]] = {}
    for source, name in zip(SOURCES, policies):
        offset = 0
        for split, prompts in by_split.items():
            pooled, offset = sampled[name][offset : offset + len(prompts)], offset + len(prompts)
            ps, rs = split_groups(prompts, pooled, groups)
            out.setdefault(source, {})[split] = score_pairs(task, labeler, fmt, sft, {}, ps, rs, k, device)
    return out


def scored_rankings(rows: Sequence, fmt, sft, device):
    """Rankings already made (`Comparison` rows) as a `ScoredPairs` with the SFT log-prob of every response."""
    from raylhf.learners.sft import response_logprobs
    from raylhf.orchestration.eval_stages import ScoredPairs
    from raylhf.orchestration.evaluation import split_by_group

    pairs = [(fmt.prompt_ids(c), fmt.response_ids(r)) for c in rows for r in c.responses]
    sizes = [len(c.responses) for c in rows]
    logprobs = response_logprobs(sft, pairs, fmt.tokenizer.pad_token_id, device)
    return ScoredPairs(list(rows), {"sft_logprob": split_by_group(logprobs, sizes)},
                       split_by_group([len(r) for _, r in pairs], sizes))


def logprob_mixes(fit, scored: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """The SFT log-prob as a reward-model feature, measured without training one: for each reward model `n`, the
    weight w of `n + w * sft_logprob` that orders `fit`'s ranked pairs best (a grid; `fit` is a `ScoredPairs` of
    rankings none of these models trained on), added to every split as scorer `n+logprob`. Returns the weights."""
    from raylhf.orchestration.evaluation import pairwise_agreement

    grid = [0.0, *(10.0 ** (e / 8) for e in range(-32, 9))]
    weights = {}
    for n in names:
        def mix(sp, w: float) -> list[list[float]]:
            return [[r + w * lp for r, lp in zip(rs, lps)] for rs, lps in zip(sp.scores[n], sp.scores["sft_logprob"])]
        weights[n] = max(grid, key=lambda w: pairwise_agreement(mix(fit, w), fit.rankings, ties=fit.ties))
        for by_split in scored.values():
            for sp in by_split.values():
                sp.scores[f"{n}+logprob"] = mix(sp, weights[n])
    return weights


def random_init(preset: str, tokenizer, context: int, out: Path, seed: int) -> Path:
    from raylhf.learners.models import build_causal_lm

    build_causal_lm(preset, tokenizer, context, seed=seed).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_point(cfg, paths, point: Point, rankings: dict[str, list], work: Path, inits: dict[str, Path]) -> dict:
    from raylhf.contracts.dataio import write_records
    from raylhf.contracts.records import Comparison
    from raylhf.orchestration.paths import RunPaths
    from raylhf.orchestration.stages import stage_rm

    rows = first_k(rankings[point.source], point.prompts, point.k)
    data = work / "data" / f"{point.name}.jsonl"
    write_records(data, rows, Comparison)
    scratch = RunPaths(work / "scratch")  # the stage's metrics rows stay out of the run's metrics.jsonl
    warm = paths.model("rm") if point.init == "previous" else None
    if point.rm:
        cfg = cfg.model_copy(update={"rm": cfg.rm.model_copy(update=dict(point.rm))})
    summary = stage_rm(cfg, scratch, inits.get(point.init, paths.model("sft")), data, work / "rms" / point.name,
                       init=warm)
    return {**dataclasses.asdict(point), "rows": len(rows), "responses": sum(len(c.responses) for c in rows),
            "train_pairs": sum(len(c.responses) * (len(c.responses) - 1) // 2 for c in rows),
            "train_s": summary["seconds"], "val_accuracy": summary["val_accuracy"], "rm": dict(point.rm),
            "steps": cfg.rm.epochs * math.ceil(summary["train_prompts"] / cfg.rm.batch_prompts)}


def step_seconds(rows: Sequence[dict], stage: str) -> float:
    """Median seconds between consecutive step rows of `stage` in a metrics log (start-up and the held-out
    evaluation of the last step left out by the median)."""
    times = sorted(r["time"] for r in rows if r.get("stage") == stage)
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    return gaps[len(gaps) // 2] if gaps else float("nan")


def pretrain_cost(cfg, paths, task, work: Path, steps: int) -> dict[str, Any]:
    """Seconds per pretraining step of each preset (`steps` steps of the `pretrain` stage), and the `small`
    base model's full pretraining (`pretrain.steps`) and SFT (the demo's SFT seconds x the step-time ratio)."""
    from raylhf.orchestration.paths import RunPaths
    from raylhf.orchestration.stages import load_summary, stage_pretrain

    out: dict[str, Any] = {"steps": steps, "full_steps": cfg.pretrain.steps}
    for preset in ("tiny", "small"):
        root = work / f"pretrain-{preset}"
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "data").exists():
            os.symlink(paths.data.resolve(), root / "data")
        c = cfg.model_copy(update={"model": cfg.model.model_copy(update={"preset": preset}),
                                   "pretrain": cfg.pretrain.model_copy(update={"steps": steps})})
        scratch = RunPaths(root)
        s = stage_pretrain(c, scratch, task)
        rows = [json.loads(line) for line in scratch.metrics.read_text().splitlines() if line.strip()]
        out[preset] = {"seconds": s["seconds"], "parameters": s["parameters"], "step_s": step_seconds(rows, "pretrain")}
    ratio = out["small"]["step_s"] / out["tiny"]["step_s"]
    demo = {stage: (load_summary(paths, stage) or {}).get("seconds") for stage in ("pretrain", "sft")}
    out.update(ratio=ratio, demo_tiny_s=demo, small_estimate_s={
        "pretrain": out["small"]["step_s"] * cfg.pretrain.steps,
        **({"sft": demo["sft"] * ratio} if demo["sft"] else {})})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="finished run (models/sft, models/rm, "
                        "data/comparisons.jsonl; rounds/1 for the init and source curves)")
    parser.add_argument("--unit", type=int, default=375, help="prompts of 1x (K = collect.k responses each)")
    parser.add_argument("--k-unit", type=int, default=192,
                        help="prompts of K = collect.k in the K curves (equal responses: x K / K')")
    parser.add_argument("--size-multiples", type=int, nargs="*", default=[1, 4],
                        help="data multiples of the random tiny / small pair")
    parser.add_argument("--eval-groups", type=int, default=2,
                        help="independent groups of K+1 samples per held-out prompt")
    parser.add_argument("--pretrain-steps", type=int, default=10, help="steps per preset to time pretraining (0: skip)")
    parser.add_argument("--points", nargs="*", help="train only these points (by name); default: every curve's")
    parser.add_argument("--score", nargs="*", default=[], metavar="NAME=PATH",
                        help="also score these reward models (trained elsewhere, e.g. by `raylhf rm`) on the same pairs")
    parser.add_argument("--logprob-mix", action="store_true",
                        help="also score every reward model plus w x the SFT log-prob (w fitted on round 1's rankings)")
    parser.add_argument("--plot", nargs="*", type=Path, metavar="RESULTS_JSON",
                        help="only draw the recipe curve (accuracy against optimiser steps) of these results files "
                             "into benchmarks/results/rm_steps.png, and exit")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("overrides", nargs="*", help="config overrides (rm.*, eval.rm_eval_prompts, ...)")
    parser.add_argument("--out", type=Path, default=RESULTS / "rm_curves.json")
    args = parser.parse_args()
    if args.plot:
        print(plot_steps(args.plot, RESULTS / "rm_steps.png"))
        return
    with scratch_run(args.run, READS) as run:
        measure(args, run)


def measure(args, run: Path) -> None:
    """Every point of `args`, on the scratch run `run` (a copy of `args.run`'s `READS`)."""
    from raylhf.configs.loader import load_config
    from raylhf.learners.models import context_length, is_checkpoint, load_causal_lm
    from raylhf.orchestration.preflight import load_format
    from raylhf.learners.reward_model import load_reward_model
    from raylhf.orchestration.paths import RunPaths
    from raylhf.orchestration.rounds import policy_name, policy_path
    from raylhf.orchestration.stages import setup_torch
    from raylhf.tasks import load_task

    t_start = time.time()
    paths = RunPaths(run)
    for stage in ("sft", "rm"):
        if not is_checkpoint(paths.model(stage)):
            raise SystemExit(f"{RunPaths(args.run).model(stage)} missing: run `make run` (or `raylhf run`) first")
    cfg = load_config(args.config, [*args.overrides, *run_overrides(run)])
    device, _ = setup_torch(cfg)
    task = load_task(cfg.task)
    fmt = load_format(cfg, paths.model("sft"))
    tokenizer = fmt.tokenizer
    context = context_length(paths.model("sft"))
    sft = load_causal_lm(paths.model("sft"), cfg.device)
    rankings = load_rankings(cfg, paths)
    current = {policy_name(0): policy_path(paths, 0)} if is_checkpoint(policy_path(paths, 0)) else {}
    curves = plan(args.unit, cfg.collect.k, args.k_unit, args.size_multiples, len(rankings.get("current", [])))
    if "current" not in rankings:
        curves = {c: [p for p in ps if p.source != "current"] for c, ps in curves.items()}
    # The small model's points last: the most expensive by far.
    points = sorted({p.name: p for ps in curves.values() for p in ps}.values(), key=lambda p: p.init == "random-small")
    if args.points:
        points = [p for p in points if p.name in args.points]
    for p in points:
        if p.prompts > len(rankings[p.source]):  # e.g. 8x when a few prompts had < 2 distinct samples
            print(f"{p.name}: {p.prompts} prompts wanted, the run has {len(rankings[p.source])} rows of "
                  f"{p.source}; it trains on all of them")
    print(f"{len(points)} reward models to train: {', '.join(p.name for p in points)}")

    t0 = time.time()
    scored = eval_pairs(cfg, paths, task, fmt, sft, current, args.eval_groups, device)
    import ray

    ray.shutdown()  # the generator actors' cores go back to training
    eval_sample_s = time.time() - t0
    references = {"demo-rm": paths.model("rm"), "demo-round1-rm": paths.round(1).model("rm"),
                  **{n: Path(p) for n, p in (s.split("=", 1) for s in args.score)}}
    results: dict[str, Any] = {"unit_prompts": args.unit, "k": cfg.collect.k, "eval_groups": args.eval_groups,
                               "overrides": args.overrides, "scored_elsewhere": args.score, "eval_sample_s": eval_sample_s, "points": {},
                               "references": [n for n, p in references.items() if is_checkpoint(p)]}

    # `--logprob-mix` is fitted on round 1's rankings (of the current policy's samples), which no `sft-*` point
    # trained on; every reward model is scored on them as on the held-out pairs.
    fit = scored_rankings(rankings["current"], fmt, sft, device) if args.logprob_mix and "current" in rankings else None

    def score(name: str, path: Path) -> float:
        t = time.time()
        rm = load_reward_model(path, cfg.device)
        own = load_format(cfg, path)  # a reward model from another SFT may have its own tokenizer
        for sp in [sp for by_split in scored.values() for sp in by_split.values()] + ([fit] if fit else []):
            sp.add_reward_model(name, rm, own, device)
        return time.time() - t

    for name in results["references"]:
        score(name, references[name])
    work = run.parent / "work"  # removed with the scratch run
    inits = {"base": paths.model("base")}
    for preset in ("tiny", "small"):
        if any(p.init == f"random-{preset}" for p in points):
            inits[f"random-{preset}"] = random_init(preset, tokenizer, context, work / f"random-{preset}", cfg.seed)
    for p in points:
        if p.init == "random-small" and args.pretrain_steps and "pretrain_cost" not in results:
            results["pretrain_cost"] = pretrain_cost(cfg, paths, task, work, args.pretrain_steps)
        r = train_point(cfg, paths, p, rankings, work, inits)
        r["score_s"] = score(p.name, work / "rms" / p.name)
        results["points"][p.name] = r
        print(f"  {p.name:<22} {r['rows']:>5} prompts K={p.k} init={p.init:<13} train {r['train_s']:6.1f} s  "
              f"score {r['score_s']:5.1f} s  val acc {r['val_accuracy']:.3f}", flush=True)
        report(results, task, scored, curves, t_start, args.out)  # a cut-short run keeps what it measured
    if args.pretrain_steps and "pretrain_cost" not in results:
        results["pretrain_cost"] = pretrain_cost(cfg, paths, task, work, args.pretrain_steps)
    if fit is not None:
        results["logprob_mix"] = logprob_mixes(fit, scored, [*results["references"], *results["points"]])
    print("\n" + "\n".join(report(results, task, scored, curves, t_start, args.out)))


if __name__ == "__main__":
    main()

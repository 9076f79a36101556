"""Throughput of the PPO stage, async actor/learner pipeline vs the strictly sequential baseline.

The modes run the same config (same actors, resources, batch sizes) one after the other in one
invocation, so the ratio is comparable even on a noisy shared machine. Needs a run's SFT and RM
checkpoints (e.g. after `make run`: runs/demo). Modes (`--modes`, default all three): `sync`, `async`
(weights applied between generate calls) and `async_in_flight` (async with
`generation.weight_updates=in_flight`: weights applied inside the running generate call); for each the
script reports samples/s, the staleness distribution and the fraction of rollouts whose generation spanned
a weight update.

Next to the achieved async / sync ratio the script prints slime's bound on it, from the phase times the
sync run measured (per learner step: generate, score, train, and the serial rest — publish, weight
apply, checkpoints — which no mode overlaps):

    speedup <= (t_gen + t_score + t_train + t_sync) / (max(t_gen, t_score, t_train) + t_sync)

and the learner's own per-phase profile (`time_<phase>_s` metrics of `PPOLearner.train_step`, median per
step) in each mode: on shared cores the learner's step is slower in async, where it competes with the
generator and the scorer, than in sync, where it runs alone.

Every mode runs in a scratch copy of the run's data, SFT and reward model (`scratch.scratch_run`): the run
itself is only read.

    .venv/bin/python benchmarks/bench_pipeline.py --run runs/demo --steps 40
    .venv/bin/python benchmarks/bench_pipeline.py --run runs/demo --steps 40 ppo.ptx_coef=0
    .venv/bin/python benchmarks/bench_pipeline.py --run runs/demo --steps 40 --modes async async_in_flight \
        --out benchmarks/results/pipeline_calls128.json ppo.prompts_per_request=128 ppo.buffer_size=256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `scratch` also when this file is loaded by path

from scratch import run_overrides, scratch_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Overrides of each measured mode on top of the command line's.
MODES = {"sync": ["ppo.mode=sync"], "async": ["ppo.mode=async"],
         "async_in_flight": ["ppo.mode=async", "generation.weight_updates=in_flight"]}


def slime_bound(sync: dict, steps: int) -> dict[str, float]:
    """Per-step phase times of the sync run and slime's bound on the async / sync speedup."""
    phases = sync["phase_s"]
    t = {"gen": phases.get("generate", 0.0) / steps, "score": phases.get("score", 0.0) / steps,
         "train": phases.get("train", 0.0) / steps,
         "sync": sum(phases.get(k, 0.0) for k in ("publish", "apply_weights", "checkpoint")) / steps}
    bound = (t["gen"] + t["score"] + t["train"] + t["sync"]) / (max(t["gen"], t["score"], t["train"]) + t["sync"])
    return {**{f"t_{k}_s": v for k, v in t.items()}, "bound": bound}


def learner_profile(metrics_path: Path, since: float) -> dict[str, float]:
    """Median per step of the learner's `time_*_s` metrics in the rows logged after `since`."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage") == "ppo" and r.get("time", 0) >= since and "step_time_s" in r]
    keys = [k for k in rows[0] if k.startswith("time_") and k.endswith("_s")] if rows else []
    # a step whose whole batch was dropped as stale trains nothing and logs no phase times
    return {k[len("time_"):-len("_s")]: float(np.median([r[k] for r in rows if k in r])) for k in keys} | (
        {"step": float(np.median([r["step_time_s"] for r in rows]))} if rows else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run directory with models/sft and models/rm")
    parser.add_argument("--steps", type=int, default=40, help="learner steps per mode")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="modes to measure, in order")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to both modes")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = parser.parse_args()

    from raylhf.configs.loader import load_config
    from raylhf.orchestration.paths import RunPaths
    from raylhf.orchestration.ppo_stage import run_ppo

    source = RunPaths(args.run)
    for stage in ("sft", "rm"):
        if not (source.model(stage) / "config.json").exists():
            raise SystemExit(f"{source.model(stage)} missing: run `make run` (or `raylhf run`) first")
    results, profiles = {}, {}
    with scratch_run(args.run, ["data", "models/sft", "models/rm"]) as run:
        paths = RunPaths(run)
        for mode in args.modes:
            cfg = load_config(args.config, [*args.overrides, *MODES[mode], f"ppo.total_steps={args.steps}",
                                            "ppo.eval_every=0", *run_overrides(run)])
            t0 = time.time()
            summary = run_ppo(cfg, paths, paths.model("sft"), paths.model("rm"), run / f"ppo-{mode}",
                              with_eval=False, fresh=True)
            summary["total_s"] = time.time() - t0
            results[mode] = summary
            profiles[mode] = learner_profile(paths.metrics, t0)

    for s in results.values():
        s["spanning_fraction"] = s.get("rollouts_in_flight_updated", 0) / max(s["rollouts"], 1)
        s["mean_staleness"] = mean_staleness(s["staleness_histogram"])
    cols = ["samples_per_s", "tokens_per_s", "generator_busy", "learner_busy", "mean_staleness", "max_staleness_seen",
            "spanning_fraction", "wall_s"]
    print(f"{'mode':<16} " + " ".join(f"{c:>18}" for c in cols))
    for mode, s in results.items():
        print(f"{mode:<16} " + " ".join(f"{s[c]:>18.3f}" if isinstance(s[c], float) else f"{s[c]:>18}" for c in cols))
    out: dict = {"steps": args.steps, "overrides": args.overrides, "learner_profile": profiles, "modes": results}
    if "sync" in results:
        bound = slime_bound(results["sync"], results["sync"]["steps"])
        print("sync phase times per step (s): " + ", ".join(f"{k[2:-2]} {v:.3f}" for k, v in bound.items() if k.startswith("t_")))
        out["slime"] = bound
        for mode in [m for m in results if m != "sync"]:
            ratio = results[mode]["samples_per_s"] / results["sync"]["samples_per_s"]
            print(f"{mode} / sync throughput: {ratio:.2f}x; slime bound {bound['bound']:.2f}x; "
                  f"achieved {ratio / bound['bound']:.0%} of the bound")
            if mode == "async":  # the figures earlier versions of this file reported
                out.update(ratio=ratio, fraction_of_bound=ratio / bound["bound"])
    for mode, s in results.items():
        print(f"staleness histogram ({mode}):", s["staleness_histogram"])
    print("\nlearner step profile, ms (median per step)")
    print(f"{'phase':<17}" + "".join(f"{m:>17}" for m in results))
    for phase in profiles[next(iter(results))]:
        print(f"{phase:<17}" + "".join(f"{1e3 * profiles[m].get(phase, float('nan')):>17.1f}" for m in results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


def mean_staleness(histogram: dict) -> float:
    """Mean policy-version lag of the rollouts handed to the learner, from the summary's histogram."""
    total = sum(histogram.values())
    return sum(int(k) * v for k, v in histogram.items()) / total if total else 0.0


if __name__ == "__main__":
    main()

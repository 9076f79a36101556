"""Throughput of the PPO stage, async actor/learner pipeline vs the strictly sequential baseline.

Both modes run the same config (same actors, resources, batch sizes) one after the other in one
invocation, so the ratio is comparable even on a noisy shared machine. Needs a run's SFT and RM
checkpoints (e.g. after `make run`: runs/demo).

    .venv/bin/python benchmarks/bench_pipeline.py --run runs/demo --steps 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run directory with models/sft and models/rm")
    parser.add_argument("--steps", type=int, default=40, help="learner steps per mode")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to both modes")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = parser.parse_args()

    from raylhf.configs.loader import load_config
    from raylhf.orchestration.paths import RunPaths
    from raylhf.orchestration.ppo_stage import run_ppo

    paths = RunPaths(args.run)
    for stage in ("sft", "rm"):
        if not (paths.model(stage) / "config.json").exists():
            raise SystemExit(f"{paths.model(stage)} missing: run `make run` (or `raylhf run`) first")
    results = {}
    for mode in ("sync", "async"):
        cfg = load_config(args.config, [*args.overrides, f"ppo.mode={mode}", f"ppo.total_steps={args.steps}",
                                        "ppo.eval_every=0", f"output_dir={args.run.parent}", f"name={args.run.name}"])
        t0 = time.time()
        summary = run_ppo(cfg, paths, paths.model("sft"), paths.model("rm"), Path("/tmp") / f"bench_ppo_{mode}",
                          with_eval=False)
        summary["total_s"] = time.time() - t0
        results[mode] = summary

    cols = ["samples_per_s", "tokens_per_s", "generator_busy", "learner_busy", "max_staleness_seen", "wall_s"]
    print(f"{'mode':<6} " + " ".join(f"{c:>18}" for c in cols))
    for mode, s in results.items():
        print(f"{mode:<6} " + " ".join(f"{s[c]:>18.3f}" if isinstance(s[c], float) else f"{s[c]:>18}" for c in cols))
    ratio = results["async"]["samples_per_s"] / results["sync"]["samples_per_s"]
    print(f"async / sync throughput: {ratio:.2f}x")
    print("staleness histogram (async):", results["async"]["staleness_histogram"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "ratio": ratio, "modes": results}, indent=2))


if __name__ == "__main__":
    main()

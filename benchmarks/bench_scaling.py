"""Throughput of the async PPO stage against the number of generators, the number of scorers and model size.

One invocation runs every cell one after the other on the same Ray: generators x scorers in {1, 2} x {1, 2}
for each model preset (`tiny`, `small`, configs/*.yaml), on randomly initialised checkpoints of that
preset with the demo tokenizer (no trained `small` SFT policy or reward model exists), plus one reference
cell on a finished run's trained `tiny` SFT policy and reward model. Random policies almost never sample
EOS, so their responses run to `generation.max_new_tokens`; the trained policy's are short.

Each cell is a fresh `run_ppo` (`ppo.mode=async`, the default PPO-ptx config) in its own scratch run
directory, beside a scratch copy of the finished run's data and models (`scratch.scratch_run`): the run itself is
only read. Figures are steady state: the first `--warmup` learner steps are skipped, and samples/s and each
actor kind's busy fraction are taken between the warm-up's last step and the final one, from the per-step
rows of `metrics.jsonl` (cumulative `wall_s` and `*_busy_s`):

    samples/s = batch_size x measured steps / wall seconds of the window
    busy      = busy seconds of the kind in the window / (window seconds x actors of the kind)
    actor-s per batch = busy seconds of the kind in the window (summed over its actors) / measured steps

A busy second is one with work queued on the actor (a generate call or scoring request at the head of its
queue until its answer, a train step), not a CPU second: five one-thread actors on two cores all count as
busy while they wait for a core.

Actor resources are the same in every cell (`--gen-cpus`, `--scorer-cpus`, `--learner-cpus`; every actor
runs one torch thread whatever its share), so only the number of actors changes.

    .venv/bin/python benchmarks/bench_scaling.py --run runs/demo --steps 15 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import RESULTS, learner_profile  # noqa: E402
from bench_scoring import _Vocab, build_models  # noqa: E402
from scratch import scratch_run  # noqa: E402

KINDS = ("generator", "scorer", "learner")


def random_checkpoints(preset: str, tokenizer_dir: Path, out: Path) -> tuple[Path, Path]:
    """Random SFT policy and reward model of `preset` (bench_scoring's), saved with the demo tokenizer."""
    from raylhf.learners.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    vocab = _Vocab(len(tokenizer))
    if (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) != (
            vocab.pad_token_id, vocab.bos_token_id, vocab.eos_token_id):
        raise SystemExit(f"{tokenizer_dir}: special token ids differ from the random checkpoints' {vocab}")
    sft, rm = (Path(p) for p in build_models(out, len(tokenizer), preset))
    for model_dir in (sft, rm):
        tokenizer.save_pretrained(model_dir)
    return sft, rm


def steady_state(rows: list[dict], warmup: int, batch_size: int, actors: dict[str, int]) -> dict[str, float]:
    """Throughput and busy fractions between the end of step `warmup` and the last step."""
    rows = sorted((r for r in rows if "reward" in r), key=lambda r: r["step"])
    first, last = next(r for r in rows if r["step"] == warmup), rows[-1]
    window = [r for r in rows if r["step"] > warmup]
    wall = last["wall_s"] - first["wall_s"]
    out = {"measured_steps": len(window), "window_s": wall,
           "samples_per_s": batch_size * len(window) / wall,
           "response_len": sum(r["response_len"] for r in window) / len(window)}
    out["tokens_per_s"] = out["samples_per_s"] * out["response_len"]
    for kind in KINDS:
        busy_s = last[f"{kind}_busy_s"] - first[f"{kind}_busy_s"]
        out[f"{kind}_busy"] = busy_s / (wall * actors[kind])
        # What one batch costs the kind, summed over its actors: flat when more actors only split the work.
        out[f"{kind}_s_per_batch"] = busy_s / len(window)
    return out


def run_cell(name: str, preset: str, sft: Path, rm: Path, generators: int, scorers: int, args, scratch: Path,
             data: Path) -> dict:
    from raylhf.configs.loader import load_config
    from raylhf.orchestration.paths import RunPaths
    from raylhf.orchestration.ppo_stage import run_ppo

    root = scratch / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "data").symlink_to(data.resolve())  # prompts and the ptx corpus, of the scratch copy: only read
    cfg = load_config(preset, [
        "ppo.mode=async", f"ppo.total_steps={args.warmup + args.steps}", "ppo.eval_every=0",
        f"generation.num_generators={generators}", f"reward.num_actors={scorers}",
        f"generation.num_cpus={args.gen_cpus}", f"reward.num_cpus={args.scorer_cpus}", f"ppo.num_cpus={args.learner_cpus}",
        f"output_dir={scratch}", f"name={name}", *args.overrides])
    paths = RunPaths(root)
    t0 = time.time()
    summary = run_ppo(cfg, paths, sft, rm, root / "ppo_out", with_eval=False, fresh=True)
    rows = [json.loads(line) for line in paths.metrics.read_text().splitlines() if line.strip()]
    steady = steady_state(rows, args.warmup, cfg.ppo.batch_size,
                          {"generator": generators, "scorer": scorers, "learner": 1})
    profile = learner_profile(paths.metrics, t0)
    whole = {k: summary[k] for k in ("samples_per_s", "tokens_per_s", "generator_busy", "scorer_busy", "learner_busy",
                                     "wall_s", "steps", "staleness_histogram", "placement")}
    return {"cell": name, "preset": preset, "generators": generators, "scorers": scorers, **steady,
            "learner_step_s": profile.get("step"), "learner_profile_s": profile, "whole_run": whole,
            "setup_s": summary["setup_s"]}


def print_table(cells: list[dict]) -> None:
    base = {c["preset"]: c["samples_per_s"] for c in cells if (c["generators"], c["scorers"]) == (1, 1)
            and c["checkpoints"] == "random"}
    print("| model | checkpoints | generators | scorers | samples/s | vs 1 + 1 | tokens/s | response tokens | "
          "busy: gen / scorer / learner | actor-s per batch: gen / score / learn | learner step s |")
    print("|" + "---|" * 2 + "---:|" * 9)
    for c in cells:
        ratio = c["samples_per_s"] / base[c["preset"]] if c["checkpoints"] == "random" and c["preset"] in base else None
        busy = " / ".join(f"{c[f'{k}_busy']:.2f}" for k in KINDS)
        per_batch = " / ".join(f"{c[f'{k}_s_per_batch']:.2f}" for k in KINDS)
        print(f"| {c['preset']} | {c['checkpoints']} | {c['generators']} | {c['scorers']} | {c['samples_per_s']:.1f} | "
              f"{f'{ratio:.2f}x' if ratio else '—'} | {c['tokens_per_s']:.0f} | {c['response_len']:.1f} | {busy} | "
              f"{per_batch} | {c['learner_step_s']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"),
                        help="finished run: its data, tokenizer and trained tiny SFT / RM (the reference cell)")
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"], choices=["tiny", "small"],
                        help="model presets of the random cells (none: only the trained reference cell)")
    parser.add_argument("--generators", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--scorers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=15, help="measured learner steps per cell, after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="learner steps per cell left out of the figures")
    parser.add_argument("--gen-cpus", type=float, default=0.25, help="generation.num_cpus of every cell")
    parser.add_argument("--scorer-cpus", type=float, default=0.25, help="reward.num_cpus of every cell")
    parser.add_argument("--learner-cpus", type=float, default=1.0, help="ppo.num_cpus of every cell")
    parser.add_argument("--no-trained", action="store_true", help="skip the cell on the run's trained checkpoints")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="directory for the scratch runs (default: the system's temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every cell")
    args = parser.parse_args()

    from raylhf.orchestration.paths import RunPaths

    with scratch_run(args.run, ["data", "models/base", "models/sft", "models/rm"], parent=args.scratch) as run:
        source, scratch = RunPaths(run), run.parent
        needed = [source.prompts("train"), source.corpus("train"), source.model("base") / "tokenizer.json"]
        if not args.no_trained:
            needed += [source.model("sft") / "config.json", source.model("rm") / "config.json"]
        for path in needed:
            if not path.exists():
                raise SystemExit(f"{args.run / path.relative_to(run)} missing: run `make run` (or `raylhf run`) first")
        checkpoints = {p: random_checkpoints(p, source.model("base"), scratch / f"models-{p}") for p in args.presets}

        plan = [] if args.no_trained else [("tiny-trained-1g1s", "tiny", "trained", source.model("sft"),
                                            source.model("rm"), 1, 1)]
        plan += [(f"{preset}-random-{g}g{s}s", preset, "random", *checkpoints[preset], g, s)
                 for preset in args.presets for g in args.generators for s in args.scorers]
        cells = []
        for name, preset, kind, sft, rm, g, s in plan:
            cell = {**run_cell(name, preset, sft, rm, g, s, args, scratch, source.data), "checkpoints": kind}
            cells.append(cell)
            print(f"{name}: {cell['samples_per_s']:.1f} samples/s, busy "
                  + ", ".join(f"{k} {cell[f'{k}_busy']:.2f}" for k in KINDS), flush=True)

    print()
    print_table(cells)
    load = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "steps": args.steps, "warmup": args.warmup, "overrides": args.overrides,
        "num_cpus": {"generator": args.gen_cpus, "scorer": args.scorer_cpus, "learner": args.learner_cpus},
        "load_avg_after": load, "cells": cells}, indent=2, default=str))
    print(f"\n1-min load average at the end: {load[0]:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()

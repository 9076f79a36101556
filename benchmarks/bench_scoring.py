"""Reward-service throughput: scored sequences/s against pool size and batch size.

Builds a random `tiny` Llama (the demo architecture, vocab 1024) as reference policy and a scalar-head
reward model from it, makes rollouts of realistic length (prompt 12-20 tokens, response 24-40), and
times `RewardPool.score(batch)` end to end (dispatch, RM + reference forward, results back) for each
pool size and batch size: the median over rounds that interleave all cells (after a warm-up round),
so a shared machine's changing load hits every cell alike. An in-process `RewardScorer` with the same thread
count per model copy is the no-Ray baseline; it runs at the niceness Ray gives its workers (15), so it
competes for shared cores on the same terms. Prints a table; writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/bench_scoring.py [--pool-sizes 1 2] [--batch-sizes 16 64 256] [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class _Vocab:
    """What `build_causal_lm` reads from a tokenizer: its size and special ids."""

    size: int
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __len__(self) -> int:
        return self.size


def build_models(out: Path, vocab_size: int, preset: str) -> tuple[str, str]:
    import torch
    from transformers import AutoModelForTokenClassification

    from raylhf.learners.models import build_causal_lm

    lm_dir, rm_dir = out / "sft", out / "rm"
    build_causal_lm(preset, _Vocab(vocab_size), max_position_embeddings=256, seed=0).save_pretrained(lm_dir)
    torch.manual_seed(1)
    rm = AutoModelForTokenClassification.from_pretrained(lm_dir, num_labels=1, use_safetensors=True)  # the RM format
    rm.save_pretrained(rm_dir)
    return str(lm_dir), str(rm_dir)


def make_rollouts(n: int, vocab_size: int, seed: int, offset: int = 0):
    from raylhf.contracts.records import Rollout

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, t = rng.randint(12, 20), rng.randint(24, 40)
        out.append(
            Rollout(
                prompt_id=f"p{i}",
                prompt_ids=[1] + [rng.randrange(3, vocab_size) for _ in range(p - 1)],
                response_ids=[rng.randrange(3, vocab_size) for _ in range(t - 1)] + [2],
                logprobs=[-1.0] * t,
                policy_version=0,
                finish_reason="eos",
                sample_id=f"s{offset + i}",
            )
        )
    return out


def time_scoring(score, batches) -> list[float]:
    """Seconds per batch."""
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        out = score(batch)
        times.append(time.perf_counter() - t0)
        assert len(out) == len(batch) and all(r.score is not None for r in out)
    return times


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool-sizes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--reps", type=int, default=7, help="timed rounds (after one warm-up round); medians reported")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs (and torch threads) per scorer actor")
    ap.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the local Ray (at least the pools' total)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--no-ref", action="store_true", help="reward model only (no reference logprobs)")
    ap.add_argument("--request-size", type=int, help="reward.request_size (default: the schema's)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="reward.dtype (default: the schema's)")
    ap.add_argument(
        "--max-tokens-per-microbatch", type=int, help="reward.max_tokens_per_microbatch (default: the schema's)"
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=15,
        help="raise this process's niceness to this value first: Ray starts its workers at niceness 15, so on a "
        "shared machine the in-process baseline competes for the cores on the same terms as the actors",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "scoring.json")
    args = ap.parse_args(argv)

    if args.nice > os.nice(0):
        os.nice(args.nice - os.nice(0))

    import ray
    import torch

    from raylhf.configs.schema import RewardConfig
    from raylhf.reward_service.actor import torch_threads_for
    from raylhf.reward_service.pool import RewardPool
    from raylhf.reward_service.scorer import RewardScorer

    tmp = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    lm_dir, rm_dir = build_models(tmp, args.vocab_size, args.preset)
    overrides = dict(
        dtype=args.dtype, request_size=args.request_size, max_tokens_per_microbatch=args.max_tokens_per_microbatch
    )
    reward = dict(
        rm_path=rm_dir,
        ref_path=lm_dir,
        ref_logprobs=not args.no_ref,
        num_cpus=args.num_cpus,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    cfg = RewardConfig(**reward)

    # In-process baseline: one model copy with the thread count of one actor.
    torch.set_num_threads(torch_threads_for(cfg.num_cpus))
    scorer = RewardScorer(cfg, rm_path=None, ref_path=None)
    load_before = os.getloadavg()

    # Every pool is up at once (idle actors cost no CPU) so the cells can be measured interleaved:
    # round r times one batch of every cell, and the load of a shared machine hits all cells alike.
    ray.init(
        num_cpus=max(args.ray_cpus, math.ceil(cfg.num_cpus * sum(args.pool_sizes))),
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    pools = {}
    try:
        for n in args.pool_sizes:
            t0 = time.perf_counter()
            pools[n] = RewardPool(RewardConfig(**reward, num_actors=n), rm_path=None, ref_path=None)
            print(f"pool of {n}: actors ready in {time.perf_counter() - t0:.1f} s", flush=True)
        cells = [("in-process", None, scorer.score)] + [("ray-pool", n, pools[n].score) for n in args.pool_sizes]
        times: dict[tuple, list[float]] = {(w, n, b): [] for w, n, _ in cells for b in args.batch_sizes}
        for rnd in range(-1, args.reps):  # round -1 warms up
            for b in args.batch_sizes:
                batch = make_rollouts(b, args.vocab_size, seed=1000 * b + rnd)
                for where, n, score in cells:
                    t = time_scoring(score, [batch])[0]
                    if rnd >= 0:
                        times[(where, n, b)].append(t)
            print(f"round {rnd + 1}/{args.reps} done" if rnd >= 0 else "warm-up done", flush=True)
    finally:
        for pool in pools.values():
            pool.shutdown()
        ray.shutdown()

    load_after = os.getloadavg()
    rows = []
    for (where, n, b), ts in times.items():
        median = statistics.median(ts)
        rows.append(
            dict(
                where=where,
                pool_size=n,
                batch_size=b,
                seqs_per_s=round(b / median, 1),
                median_batch_s=round(median, 4),
                min_batch_s=round(min(ts), 4),
                reps=len(ts),
            )
        )

    by_key = {(r["where"], r["pool_size"], r["batch_size"]): r["seqs_per_s"] for r in rows}
    print()
    header = f"{'batch':>6} | {'in-process':>10} | " + " | ".join(f"{'pool=' + str(n):>8}" for n in args.pool_sizes)
    if len(args.pool_sizes) > 1:
        header += f" | {'pool ' + str(args.pool_sizes[-1]) + '/' + str(args.pool_sizes[0]):>9}"
    print(
        f"scored sequences/s, median of interleaved rounds, {cfg.dtype}, "
        f"{torch_threads_for(args.num_cpus)} thread(s) per model copy "
        + ("(RM only)" if args.no_ref else "(RM + reference logprobs)")
    )
    print(header)
    print("-" * len(header))
    for b in args.batch_sizes:
        cells = [f"{by_key[('in-process', None, b)]:>10.1f}"]
        cells += [f"{by_key[('ray-pool', n, b)]:>8.1f}" for n in args.pool_sizes]
        line = f"{b:>6} | " + " | ".join(cells)
        if len(args.pool_sizes) > 1:
            ratio = by_key[("ray-pool", args.pool_sizes[-1], b)] / by_key[("ray-pool", args.pool_sizes[0], b)]
            line += f" | {ratio:>8.2f}x"
        print(line)

    result = dict(
        benchmark="scoring",
        command="benchmarks/bench_scoring.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        config=dict(vars(args), out=str(args.out)),
        reward=cfg.model_dump(exclude={"rm_path", "ref_path", "num_actors"}),
        machine=dict(
            cpus=os.cpu_count(),
            niceness=os.nice(0),
            platform=platform.platform(),
            python=platform.python_version(),
            loadavg_1m_before=round(load_before[0], 2),
            loadavg_1m_after=round(load_after[0], 2),
        ),
        versions=dict(torch=torch.__version__, ray=ray.__version__),
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs)")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

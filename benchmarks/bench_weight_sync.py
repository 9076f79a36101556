"""Weight-sync latency: publish a snapshot -> applied on every generator, against one memcpy.

For random Llama models of ~1M, 10M, 100M and 500M parameters (fp32, tied embeddings) the script
saves a checkpoint, starts two vLLM GeneratorActors on it (one thread each) and times, for 1 and
2 generators, what a learner's publish costs: `ray.put` of a prebuilt WeightSnapshot, then
`load_weights.remote(ref)` on every generator until all have applied it (vLLM's in-place reload
plus its CPU repacking, through the worker extension). The lower bound is one memcpy of the same
bytes on this machine (`np.copyto` into an already-touched buffer, one thread), timed right after
each sync so that both see the same load on a shared machine; the median over rounds of
sync / memcpy is the figure of merit. The breakdown shows `ray.put` and the slowest generator's
apply time as measured inside the actor.

The script runs at the niceness Ray gives its workers (15, `--nice`). Between rounds it waits
until the object store has freed the previous version (Ray frees asynchronously, about once a
second), as a learner that publishes once per training step would.

    .venv/bin/python benchmarks/bench_weight_sync.py [--sizes 1M 10M 100M 500M] [--generators 1 2] \
        [--reps 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (hidden, layers, heads of 64, ffn, vocab); tied embeddings, like the demo models
SIZES = {
    "1M": (128, 4, 2, 384, 1024),
    "10M": (256, 8, 4, 1152, 1024),
    "100M": (768, 12, 12, 2304, 16384),
    "500M": (1536, 16, 24, 4096, 16384),
}


def write_checkpoint(size: str, out_dir: Path):
    """Random-init Llama of the named size saved to out_dir; returns its state as a WeightSnapshot."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from raylhf.contracts.snapshot import build_snapshot, named_checkpoint_tensors

    hidden, layers, heads, ffn, vocab = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=64, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    snapshot = build_snapshot(named_checkpoint_tensors(model), version=1)
    del model
    gc.collect()
    return snapshot


class Memcpy:
    """One copy of a snapshot's bytes on this machine: the lower bound of any weight transfer."""

    def __init__(self, snapshot):
        import numpy as np

        self.src = list(snapshot.buffers.values())
        self.dst = [np.ones_like(b) for b in self.src]  # touched: no page faults in the timed copy

    def seconds(self) -> float:
        import numpy as np

        t0 = time.perf_counter()
        for src, dst in zip(self.src, self.dst):
            np.copyto(dst, src)
        return time.perf_counter() - t0

    def fresh_seconds(self) -> float:
        """Into newly allocated memory (page faults included), for reference."""
        t0 = time.perf_counter()
        copies = [b.copy() for b in self.src]
        elapsed = time.perf_counter() - t0
        del copies
        return elapsed


def object_store_used() -> int:
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return stats.object_store_bytes_used


def wait_store_below(limit: int, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while object_store_used() > limit and time.monotonic() < end:
        time.sleep(0.05)


def bench_size(size: str, args, ray) -> dict:
    from raylhf.actors.generator import start_generators
    from raylhf.contracts.remote import get_all
    from raylhf.configs.schema import GenerationConfig

    tmp = tempfile.TemporaryDirectory(prefix=f"bench-sync-{size}-")
    t0 = time.perf_counter()
    snapshot = write_checkpoint(size, Path(tmp.name))
    n_params = sum(s.numel for s in snapshot.specs)
    nbytes = snapshot.nbytes
    print(f"  {size}: {n_params / 1e6:.1f}M parameters, {snapshot.nbytes / 1e6:.0f} MB, "
          f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    memcpy = Memcpy(snapshot)
    fresh_s = statistics.median(memcpy.fresh_seconds() for _ in range(3))

    n_gen = max(args.generators)
    cfg = GenerationConfig(engine="vllm", num_generators=n_gen, num_cpus=1.0, kv_cache_bytes=128 * 1024 * 1024)
    t0 = time.perf_counter()
    generators = [g.handle for g in start_generators(cfg, tmp.name, name_prefix=f"bench-sync-{size}", ready_timeout_s=1800)]
    start_s = time.perf_counter() - t0
    names = [f"generator-{i}" for i in range(n_gen)]
    baseline = object_store_used()
    version = 1

    def sync(gens) -> dict:
        nonlocal version
        version += 1
        before = get_all([g.stats.remote() for g in gens], names[: len(gens)], "stats", 600)
        t0 = time.perf_counter()
        ref = ray.put(dataclasses.replace(snapshot, version=version))
        t_put = time.perf_counter() - t0
        versions = get_all([g.load_weights.remote(ref) for g in gens], names[: len(gens)], "load_weights", 1800)
        total = time.perf_counter() - t0
        assert versions == [version] * len(gens), versions
        after = get_all([g.stats.remote() for g in gens], names[: len(gens)], "stats", 600)
        apply = max(a["sync_s"] - b["sync_s"] for a, b in zip(after, before))
        del ref
        wait_store_below(baseline + snapshot.nbytes // 2)
        # the bound measured next to each sync, so both see the same machine load
        memcpy_s = statistics.median(memcpy.seconds() for _ in range(3))
        return {"total_s": total, "put_s": t_put, "apply_s": apply, "memcpy_s": memcpy_s,
                "ratio": total / memcpy_s, "apply_ratio": apply / memcpy_s, "put_ratio": t_put / memcpy_s}

    sync(generators)  # warm-up: first reload allocates the layers' staging memory
    rows = []
    for g in args.generators:
        runs = [sync(generators[:g]) for _ in range(args.reps)]
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append({"generators": g, **median, "ratio_fresh": median["total_s"] / fresh_s, "runs": runs})
        print(f"  {size} x{g}: sync {median['total_s'] * 1e3:.1f} ms (put {median['put_s'] * 1e3:.1f}, apply "
              f"{median['apply_s'] * 1e3:.1f}), memcpy {median['memcpy_s'] * 1e3:.1f} ms -> "
              f"{median['ratio']:.1f}x", flush=True)
    for g in generators:
        ray.kill(g)
    del snapshot, memcpy
    gc.collect()
    tmp.cleanup()
    return {"size": size, "params": n_params, "bytes": nbytes, "memcpy_fresh_s": fresh_s,
            "generator_start_s": start_s, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--generators", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_weight_sync.json")
    parser.add_argument("--nice", type=int, default=15,
                        help="run this process at this niceness: Ray starts its workers at 15, so on a busy "
                             "machine the in-process side competes for the cores on the same terms")
    args = parser.parse_args()
    if args.nice > os.nice(0):
        os.nice(args.nice - os.nice(0))

    import ray

    ray.init(num_cpus=max(2, max(args.generators)), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    results = [bench_size(size, args, ray) for size in args.sizes]
    ray.shutdown()

    print(f"\nWeight sync, publish (ray.put) -> applied on every generator; median of {args.reps}; "
          f"memcpy = one np.copyto of the same bytes")
    print("(ratios: median over rounds of each round's time / the memcpy timed right after it)")
    header = (f"{'model':<14}{'MB':>7}{'gens':>5}{'sync ms':>10}{'put ms':>9}{'apply ms':>10}"
              f"{'memcpy ms':>11}{'sync/memcpy':>13}{'put/memcpy':>12}{'apply/memcpy':>14}")
    print(header)
    print("-" * len(header))
    for r in results:
        for row in r["rows"]:
            name = f"{r['size']} ({r['params'] / 1e6:.0f}M)"
            print(f"{name:<14}{r['bytes'] / 1e6:>7.0f}{row['generators']:>5}"
                  f"{row['total_s'] * 1e3:>10.1f}{row['put_s'] * 1e3:>9.1f}{row['apply_s'] * 1e3:>10.1f}"
                  f"{row['memcpy_s'] * 1e3:>11.1f}{row['ratio']:>12.1f}x{row['put_ratio']:>11.1f}x"
                  f"{row['apply_ratio']:>13.1f}x")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "weight_sync", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

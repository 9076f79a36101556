"""Generation throughput: vLLM inside a GeneratorActor vs bare vLLM in one process vs the hf engine.

Same random Llama checkpoint (demo architectures, vocab 1024), same prompts (8-40 random token
ids) and the RL sampling setting (temperature 1, top-p 1, n 1, behaviour logprobs on) for every
variant; throughput counts the response tokens actually generated (EOS may end a response early):

  vllm-bare    `LLM.generate` called directly, in this process (the engine the others wrap)
  vllm-engine  `VLLMEngine.generate` in this process (request checks, rollout records)
  vllm-actor   `GeneratorActor.generate.remote` on local Ray: submit, generate in the actor,
               rollouts back to the driver
  hf-engine    `HFEngine.generate` (transformers `generate`) in this process

Every variant gets the same thread count (`--threads`, the actor's num_cpus) and niceness (Ray runs
its workers at 15; `--nice` puts this process there too). Rounds interleave the
variants (after a warm-up round), so a shared machine's changing load hits all of them alike; the
actor overhead is the median over rounds of (vllm-bare tokens/s / vllm-actor tokens/s) - 1 per
round. The order of the variants rotates from round to round.

    .venv/bin/python benchmarks/bench_generation.py [--presets tiny small] [--prompts 256] \
        [--new-tokens 32] [--reps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB = 1024
VARIANTS = ("vllm-bare", "vllm-engine", "vllm-actor", "hf-engine")


def write_checkpoint(preset: str, out_dir: Path, max_positions: int = 256, seed: int = 0) -> int:
    """A randomly initialised Llama of a demo preset, saved for vLLM and transformers. Returns #params."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from raylhf.learners.models import PRESETS

    arch = PRESETS[preset]
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_attention_heads, head_dim=arch.head_dim,
        max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def make_prompts(n: int, seed: int = 0):
    import random

    from raylhf.contracts.protocols import GenerationRequest

    rng = random.Random(seed)
    return [
        GenerationRequest(f"p{i}", (1, *(rng.randrange(3, VOCAB) for _ in range(rng.randint(7, 39)))))
        for i in range(n)
    ]


def bench_preset(preset: str, args, ray) -> dict:
    import torch

    from raylhf.actors.generator import start_generators
    from raylhf.contracts.remote import get_all
    from raylhf.actors.hf_engine import HFEngine
    from raylhf.actors.vllm_engine import VLLMEngine
    from raylhf.configs.schema import GenerationConfig
    from raylhf.contracts.protocols import SamplingSpec

    tmp = tempfile.TemporaryDirectory(prefix=f"bench-gen-{preset}-")
    ckpt = Path(tmp.name)
    n_params = write_checkpoint(preset, ckpt)
    requests = make_prompts(args.prompts)
    spec = SamplingSpec(n=1, temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    cfg = GenerationConfig(engine="vllm", num_generators=1, num_cpus=float(args.threads),
                           kv_cache_bytes=args.kv_cache_mb * 1024 * 1024)

    engine = VLLMEngine(ckpt, kv_cache_bytes=cfg.kv_cache_bytes, num_threads=args.threads, seed=0)
    actor = start_generators(cfg, ckpt, seed=0, name_prefix=f"bench-{preset}")[0].handle
    torch.set_num_threads(args.threads)
    hf = HFEngine(ckpt, num_threads=args.threads, max_batch_size=args.prompts)

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    bare_prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
    bare_params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=args.new_tokens, logprobs=0,
                                 detokenize=False, stop_token_ids=list(engine.eos_ids))

    def run(variant: str) -> tuple[int, float]:
        t0 = time.perf_counter()
        if variant == "vllm-bare":
            outs = engine._llm.generate(bare_prompts, bare_params, use_tqdm=False)
            tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        else:
            if variant == "vllm-engine":
                results = engine.generate(requests, spec)
            elif variant == "vllm-actor":
                [results] = get_all([actor.generate.remote(requests, spec)], ["actor"], "generate", 1800)
            else:
                results = hf.generate(requests, spec)
            tokens = sum(len(r.response_ids) for rs in results for r in rs)
        return tokens, time.perf_counter() - t0

    rounds = []
    for rep in range(args.reps + 1):  # round 0 warms every variant up
        row = {}
        for k in range(len(VARIANTS)):  # rotate the order so no variant always runs first
            variant = VARIANTS[(k + rep) % len(VARIANTS)]
            tokens, seconds = run(variant)
            row[variant] = {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}
        if rep:
            rounds.append(row)
        print(f"  {preset} round {rep}{' (warm-up)' if not rep else ''}: "
              + ", ".join(f"{v} {row[v]['tok_s']:.0f}" for v in VARIANTS), flush=True)

    # The actor's fixed cost per call, free of the load noise of long runs: a 1-prompt, 1-token
    # generate through Ray vs the same call in this process (the engines are equal; the
    # difference is submission, scheduling and the reply).
    probe = [requests[0]]
    one = SamplingSpec(n=1, temperature=1.0, max_new_tokens=1)
    local, remote = [], []
    for _ in range(args.call_reps):
        t0 = time.perf_counter()
        engine.generate(probe, one)
        local.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        get_all([actor.generate.remote(probe, one)], ["actor"], "generate", 600)
        remote.append(time.perf_counter() - t0)
    call_overhead_s = statistics.median(remote) - statistics.median(local)

    ray.kill(actor)
    engine.close()
    tmp.cleanup()
    median = {v: statistics.median(r[v]["tok_s"] for r in rounds) for v in VARIANTS}
    # per round, so both sides of a ratio saw the same machine load
    overhead = statistics.median(r["vllm-bare"]["tok_s"] / r["vllm-actor"]["tok_s"] - 1 for r in rounds)
    wrapper = statistics.median(r["vllm-bare"]["tok_s"] / r["vllm-engine"]["tok_s"] - 1 for r in rounds)
    return {
        "preset": preset, "params": n_params, "prompts": args.prompts, "new_tokens": args.new_tokens,
        "threads": args.threads, "median_tok_s": median, "actor_overhead": overhead,
        "engine_overhead": wrapper, "call_overhead_s": call_overhead_s,
        "call_local_s": statistics.median(local), "call_actor_s": statistics.median(remote),
        "call_overhead_of_bare_run": call_overhead_s / statistics.median(r["vllm-bare"]["seconds"] for r in rounds),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine = the actor's num_cpus")
    parser.add_argument("--kv-cache-mb", type=int, default=256)
    parser.add_argument("--call-reps", type=int, default=30, help="calls timed for the per-call actor cost")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_generation.json")
    parser.add_argument("--nice", type=int, default=15,
                        help="run this process at this niceness: Ray starts its workers at 15, so on a busy "
                             "machine the in-process side competes for the cores on the same terms")
    args = parser.parse_args()
    if args.nice > os.nice(0):
        os.nice(args.nice - os.nice(0))

    import ray

    ray.init(num_cpus=max(2, args.threads), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    results = []
    for preset in args.presets:
        results.append(bench_preset(preset, args, ray))
    ray.shutdown()

    print(f"\nGeneration throughput, {args.prompts} prompts x {args.new_tokens} new tokens, "
          f"{args.threads} thread(s) per engine, median of {args.reps} interleaved rounds (tokens/s)")
    header = (f"{'model':<16}" + "".join(f"{v:>13}" for v in VARIANTS)
              + f"{'actor overhead':>16}{'engine overhead':>17}{'actor ms/call':>15}{'of a run':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        name = f"{r['preset']} ({r['params'] / 1e6:.1f}M)"
        print(f"{name:<16}" + "".join(f"{r['median_tok_s'][v]:>13.0f}" for v in VARIANTS)
              + f"{r['actor_overhead']:>+15.1%} {r['engine_overhead']:>+16.1%}"
              + f"{r['call_overhead_s'] * 1e3:>15.1f}{r['call_overhead_of_bare_run']:>10.1%}")
    print("actor/engine overhead: median over rounds of bare tok/s / variant tok/s - 1; actor ms/call: "
          "1-token call via Ray minus in-process, and that as a share of one bare run")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "generation", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

"""Training throughput (tokens/s) of the pretrain, SFT and reward-model trainers on the demo presets.

Each cell times optimizer steps of the real training step (forward, loss, backward, AdamW) on random
token batches shaped like the demo's: pretraining windows of 128 tokens, SFT examples of a 16-token
prompt + 16-token response, RM groups of K=8 responses per prompt. Cells of one run are comparable;
compare as ratios on a shared machine.

    .venv/bin/python benchmarks/bench_training.py [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


class _Vocab:
    def __init__(self, n):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, 1, 2, 0

    def __len__(self):
        return self.n


def _time(step, steps: int) -> float:
    step()  # warm-up (allocator, autocast caches)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def bench(preset: str, bf16: bool, steps: int) -> dict[str, float]:
    from raylhf.learners.models import build_causal_lm
    from raylhf.learners.pretrain import causal_lm_loss
    from raylhf.learners.reward_model import ranking_batch_loss
    from raylhf.learners.sft import response_lm_loss
    from raylhf.learners.training import autocast, optimizer_step

    cpu = torch.device("cpu")
    rng = np.random.default_rng(0)
    model = build_causal_lm(preset, _Vocab(1024), 256)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    out = {}

    windows = torch.from_numpy(rng.integers(3, 1024, size=(32, 129)))

    def pretrain_step():
        with autocast(cpu, bf16):
            loss, _ = causal_lm_loss(model, windows)
        optimizer_step(opt, params, loss, 1.0)

    out["pretrain_tok_s"] = 32 * 128 / _time(pretrain_step, steps)

    examples = [([1, *rng.integers(3, 1024, 15)], [*rng.integers(3, 1024, 15), 2]) for _ in range(32)]

    def sft_step():
        with autocast(cpu, bf16):
            loss, _ = response_lm_loss(model, examples, 0, cpu)
        optimizer_step(opt, params, loss, 1.0)

    out["sft_tok_s"] = 32 * 32 / _time(sft_step, steps)

    from transformers import LlamaForTokenClassification

    config = model.config
    config.num_labels = 1
    rm = LlamaForTokenClassification(config)
    rm_params = list(rm.parameters())
    rm_opt = torch.optim.AdamW(rm_params, lr=1e-4)
    groups = [([[1, *rng.integers(3, 1024, 31)] for _ in range(8)], list(rng.permutation(8))) for _ in range(16)]

    def rm_step():
        with autocast(cpu, bf16):
            loss, _ = ranking_batch_loss(rm, groups, 0, cpu)
        optimizer_step(rm_opt, rm_params, loss, 1.0)

    out["rm_tok_s"] = 16 * 8 * 32 / _time(rm_step, steps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for preset in ("tiny", "small"):
        for bf16 in (False, True):
            r = bench(preset, bf16, args.steps)
            rows.append({"preset": preset, "precision": "bf16" if bf16 else "fp32", **r})
    print(f"{'preset':<7}{'precision':<10}{'pretrain tok/s':>16}{'SFT tok/s':>12}{'RM tok/s':>12}")
    for r in rows:
        print(f"{r['preset']:<7}{r['precision']:<10}{r['pretrain_tok_s']:>16.0f}{r['sft_tok_s']:>12.0f}{r['rm_tok_s']:>12.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

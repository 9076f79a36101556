"""Training throughput of the trainers on the demo presets, and a per-phase profile of the PPO learner.

`trainers`: tokens/s of optimizer steps of the real training step (forward, loss, backward, AdamW) of
the pretrain, SFT and reward-model trainers on random token batches shaped like the demo's: pretraining
windows of 128 tokens, SFT examples of a 16-token prompt + 16-token response, RM groups of K=8
responses per prompt.

`ppo`: `PPOLearner.train_step` on batches of 64 random rollouts shaped like the demo's (prompts of 9-14
tokens; responses geometric with mean 7 tokens, capped at 32, EOS last: median 5, 9 in 10 at most 16, as
the demo's demonstrations), random tiny / small checkpoints (vocabulary 1024; the value model a scalar
head on the same body, as the RM stage builds it), the config's PPO-ptx defaults unless a variant says
otherwise, the precision `train_precision: auto` picks, and then `publish` as the driver calls it after
each step. The learner reports wall seconds per phase (`raylhf.learners.ppo.PHASES`); the table gives
ms per step (median over the timed steps) and each phase's share. Variants of one run are comparable;
compare as ratios on a shared machine.

    .venv/bin/python benchmarks/bench_training.py [--steps 10] [--threads 2] [--sections trainers ppo]
    .venv/bin/python benchmarks/bench_training.py --sections ppo --threads 1 --steps 6
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raylhf.configs.schema import RunConfig

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


# name -> (PPOConfig overrides, learner switches (`PPOLearner` class attributes)[, bf16 autocast if not the default]).
# "before" is the learner as it was profiled first: every minibatch runs its own forward pass, one pretraining
# window per rollout, the output layer on every position, AdamW's foreach implementation. Each of the next five
# columns adds one change to the one before it; the last four vary the default config: micro-batches of <= 512
# padded tokens, float32 instead of bf16 autocast, half the pretraining windows, plain PPO.
_BEFORE = {"reuse_first_forward": False, "split_output_layer": False, "fused_optimizer": False}
_OLD_CFG = {"ptx_per_rl": 1.0, "attention": "sdpa", "microbatch_tokens": 0}
PPO_VARIANTS = {
    "before": (_OLD_CFG, _BEFORE),
    "+ reuse 1st fwd": (_OLD_CFG, {**_BEFORE, "reuse_first_forward": True}),
    "+ ptx_per_rl 0.25": ({**_OLD_CFG, "ptx_per_rl": 0.25}, {**_BEFORE, "reuse_first_forward": True}),
    "+ eager attention": ({**_OLD_CFG, "ptx_per_rl": 0.25, "attention": "eager"}, {**_BEFORE, "reuse_first_forward": True}),
    "+ head on responses": ({}, {"fused_optimizer": False}),
    "+ fused AdamW": ({}, {}),  # = the default config
    "default, mb 512": ({"microbatch_tokens": 512}, {}),
    "default, fp32": ({}, {}, False),
    "default, ptx 0.125": ({"ptx_per_rl": 0.125}, {}),
    "default, no ptx": ({"ptx_coef": 0.0}, {}),
}


def demo_rollouts(rng: np.random.Generator, n: int, version: int):
    """n scored rollouts shaped like the demo's (lengths measured on its prompts and PPO responses)."""
    from raylhf.contracts.records import Rollout

    out = []
    for i in range(n):
        prompt = [1, *rng.integers(3, 1024, int(rng.integers(8, 14)))]
        t = int(min(32, 1 + rng.geometric(1 / 7)))
        response = [*rng.integers(3, 1024, t - 1), 2]
        out.append(Rollout(prompt_id=f"p{i}", prompt_ids=prompt, response_ids=response,
                           logprobs=(-6.0 + 0.3 * rng.normal(size=t)).tolist(), policy_version=version,
                           finish_reason="eos", score=float(rng.normal()),
                           ref_logprobs=(-6.0 + 0.3 * rng.normal(size=t)).tolist(), sample_id=f"s{i}"))
    return out


def profile_ppo(preset: str, steps: int, workdir: Path) -> list[dict]:
    from raylhf.configs.schema import PPOConfig
    from raylhf.learners.models import build_causal_lm, pick_device
    from raylhf.learners.ppo import PHASES, PPOLearner
    from raylhf.learners.reward_model import reward_model_from_policy
    from raylhf.learners.training import use_bf16

    policy_path, value_path = workdir / f"{preset}-policy", workdir / f"{preset}-value"
    build_causal_lm(preset, _Vocab(1024), 256).save_pretrained(policy_path)
    reward_model_from_policy(policy_path, device="cpu").save_pretrained(value_path)
    stream = np.random.default_rng(1).integers(3, 1024, 200_000).astype(np.int64)
    auto_bf16 = use_bf16(RunConfig().train_precision, pick_device("auto"))
    rows = []
    for name, (overrides, switches, *precision) in PPO_VARIANTS.items():
        bf16 = precision[0] if precision else auto_bf16
        cfg = PPOConfig(**overrides)
        # Switches are class attributes read while the learner is built: set them on a subclass.
        variant = type("VariantLearner", (PPOLearner,), dict(switches))
        learner = variant(cfg, policy_path, value_path, pretrain_stream=stream, seed=0, device="cpu", bf16=bf16)
        rng = np.random.default_rng(0)
        samples = []
        for i in range(steps + 1):  # the first is a warm-up
            metrics = learner.train_step(demo_rollouts(rng, cfg.batch_size, learner.version))
            t0 = time.perf_counter()
            learner.publish()
            metrics["time_publish_s"] = time.perf_counter() - t0
            if i:
                samples.append(metrics)
        phases = {p: float(np.median([m[f"time_{p}_s"] for m in samples])) for p in (*PHASES, "publish")}
        row = {"preset": preset, "variant": name, "bf16": bf16, "ptx_windows": samples[-1]["ptx_windows"],
               "step_s": float(np.median([m["step_time_s"] for m in samples])), "phase_s": phases}
        row["step_and_publish_s"] = row["step_s"] + phases["publish"]
        rows.append(row)
    return rows


def print_profile(rows: list[dict]) -> None:
    from raylhf.learners.ppo import PHASES

    phases = (*PHASES, "publish")
    for preset in dict.fromkeys(r["preset"] for r in rows):
        sub = [r for r in rows if r["preset"] == preset]
        print(f"\nPPO learner profile, {preset} (bf16 autocast unless fp32), ms per step of 64 rollouts")
        print(f"{'phase':<17}" + "".join(f"{r['variant']:>19}" for r in sub))
        for p in phases:
            cells = "".join(f"{1e3 * r['phase_s'][p]:>11.1f} ({r['phase_s'][p] / r['step_and_publish_s']:>4.0%})"
                            for r in sub)
            print(f"{p:<17}{cells}")
        print(f"{'step + publish':<17}" + "".join(f"{1e3 * r['step_and_publish_s']:>19.1f}" for r in sub))
        base = sub[0]["step_and_publish_s"]
        print(f"{'vs first column':<17}" + "".join(f"{r['step_and_publish_s'] / base:>18.2f}x" for r in sub))
        print(f"{'ptx windows':<17}" + "".join(f"{r['ptx_windows']:>19.0f}" for r in sub))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sections", nargs="+", choices=("trainers", "ppo"), default=["trainers", "ppo"])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--out", type=Path, default=RESULTS / "training.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "steps": args.steps}
    if "trainers" in args.sections:
        rows = []
        for preset in args.presets:
            for bf16 in (False, True):
                r = bench(preset, bf16, args.steps)
                rows.append({"preset": preset, "precision": "bf16" if bf16 else "fp32", **r})
        print(f"{'preset':<7}{'precision':<10}{'pretrain tok/s':>16}{'SFT tok/s':>12}{'RM tok/s':>12}")
        for r in rows:
            print(f"{r['preset']:<7}{r['precision']:<10}{r['pretrain_tok_s']:>16.0f}{r['sft_tok_s']:>12.0f}"
                  f"{r['rm_tok_s']:>12.0f}")
        result["rows"] = rows
    if "ppo" in args.sections:
        with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
            profile = [r for preset in args.presets for r in profile_ppo(preset, args.steps, Path(tmp))]
        print_profile(profile)
        result["ppo_profile"] = profile
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

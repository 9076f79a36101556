"""raylhf's PPO stage against TRL's GRPO trainer: same SFT policy, same reward model, same prompts, same cores.

Three runs, one after the other in one invocation:

- **raylhf async** and **raylhf sync**: `run_ppo` on the config (default: the `tiny` preset, PPO-ptx),
  batches of `ppo.batch_size` (64) rollouts per learner step, in-training evaluation every
  `--eval-every` steps.
- **TRL GRPO** (`trl.GRPOTrainer`, TRL 1.16, HF `generate` in-process, `--threads` torch threads): the
  same SFT checkpoint, 64 completions per optimiser step (`--generations` per prompt), at most
  `generation.max_new_tokens` tokens each, temperature `generation.temperature`, learning rate
  `ppo.lr`, KL coefficient `ppo.kl_coef` (GRPO's β, against the SFT policy), the same training
  prompts with the same token ids (`[BOS] prompt`). Its reward function builds a `Rollout` of exactly
  the prompt and completion token ids (EOS included, as raylhf's generators return it) and scores it
  with raylhf's `RewardScorer` (same reward model, same normalisation): the number raylhf's learner
  would see. It trains for as long as raylhf async did (wall clock of the training loop, evaluation
  pauses excluded).

Reported: samples/s and median seconds per optimiser step of each, and quality at equal wall-clock:
the mean RM score and the simulated labeler's win rate over SFT samples on held-out prompts, judged
the same way for every policy (`Judge`: in-process HF sampling at `eval.temperature`, one response per
prompt, the labeler `eval.labeler_seed`), over the training time (curve) and at the end.

Needs TRL (`pip install -e '.[bench]'`; not for `--systems async sync`) and a run's SFT and RM checkpoints
(`make run`: runs/demo), which it reads from a scratch copy (`scratch.scratch_run`): the run itself is never
written.

    .venv/bin/python benchmarks/bench_vs_trl.py --run runs/demo --steps 60
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `scratch` also when this file is loaded by path

from scratch import run_overrides, scratch_run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# The three runs, by their `--systems` name and the name they are reported under.
SYSTEMS = {"async": "raylhf async", "sync": "raylhf sync", "trl": "TRL GRPO"}


class Judge:
    """Win rate over SFT and mean RM score of a policy checkpoint on fixed held-out prompts."""

    def __init__(self, cfg, paths, prompts, threads: int):
        from raylhf.actors.sampling import sampling_spec
        from raylhf.contracts.protocols import GenerationRequest
        from raylhf.orchestration.preflight import load_format
        from raylhf.reward_service.scorer import RewardScorer
        from raylhf.tasks import load_task

        self.cfg, self.threads, self.prompts = cfg, threads, prompts
        self.fmt = load_format(cfg, paths.model("sft"))
        self.tokenizer = self.fmt.tokenizer
        self.labeler = load_task(cfg.task).labeler(cfg.eval.labeler_seed)
        self.sampling = self.fmt.sampling(dataclasses.replace(sampling_spec(cfg.generation, seed=cfg.seed + 1), n=1,
                                                              temperature=cfg.eval.temperature))
        self.requests = [GenerationRequest(p.prompt_id, tuple(self.fmt.prompt_ids(p))) for p in prompts]
        self.scorer = RewardScorer(cfg.reward.model_copy(update={"ref_logprobs": False}),
                                   rm_path=str(paths.model("rm")), ref_path=None)
        self.reference = None
        self.reference = self._sample(paths.model("sft"))

    def _sample(self, checkpoint):
        from raylhf.actors.hf_engine import HFEngine

        engine = HFEngine(checkpoint, seed=self.cfg.seed + 1, num_threads=self.threads)
        results = engine.generate(self.requests, self.sampling)
        rollouts = [r[0] for r in results]
        return rollouts, [self.fmt.decode_response(r.response_ids) for r in rollouts]

    def __call__(self, checkpoint) -> dict[str, float]:
        rollouts, texts = self._sample(checkpoint)
        scores = [r.score for r in self.scorer.score(rollouts)]
        wins = [self.labeler.prefer(p.prompt, a, b) for p, a, b in zip(self.prompts, texts, self.reference[1])]
        return {"win_rate_vs_sft": float(np.mean(wins)), "rm_score": float(np.mean(scores)),
                "response_len": float(np.mean([len(r.response_ids) for r in rollouts]))}


def run_raylhf(cfg, paths, mode: str, steps: int, eval_every: int, eval_prompts: int, out: Path) -> dict:
    from raylhf.orchestration.ppo_stage import run_ppo

    cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={
        "mode": mode, "total_steps": steps, "eval_every": eval_every, "eval_prompts": eval_prompts})})
    t0 = time.time()
    summary = run_ppo(cfg, paths, paths.model("sft"), paths.model("rm"), out, with_eval=eval_every > 0, fresh=True)
    rows = [json.loads(line) for line in paths.metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage") == "ppo" and r.get("time", 0) >= t0]
    step_s = np.diff([0.0] + [r["wall_s"] for r in rows if "wall_s" in r])
    curve = [(r.get("wall_s", 0.0), r["eval_win_rate_vs_sft"]) for r in rows if "eval_win_rate_vs_sft" in r]
    return {"samples_per_s": summary["samples_per_s"], "s_per_step": float(np.median(step_s[1:])) if len(step_s) > 1
            else float("nan"), "steps": summary["steps"], "wall_s": summary["wall_s"], "curve": curve,
            "final_reward": summary.get("final_reward"), "checkpoint": str(out)}


def run_trl(cfg, paths, judge: Judge, seconds: float, generations: int, threads: int, eval_every: int,
            workdir: Path, max_steps: int, attention: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from raylhf.contracts.dataio import read_records
    from raylhf.contracts.records import Prompt, Rollout
    from raylhf.learners.training import use_bf16

    torch.set_num_threads(threads)
    fmt = judge.fmt
    tokenizer = fmt.tokenizer
    tokenizer.padding_side = "left"
    prompts, _ = read_records(paths.prompts("train"), Prompt)
    # TRL tokenises the prompt text with the tokenizer's defaults; the dataset holds the text that gives
    # raylhf's prompt ids that way (the rendered prompt, BOS left to the tokenizer when it adds one), checked on
    # every prompt.
    texts = [fmt.prompt_text(p) for p in prompts]
    if fmt.template is not None and fmt.bos:  # the template wrote BOS already: TRL's tokenizer call must not add one
        texts = [t.removeprefix(tokenizer.bos_token) for t in texts]
    ids_of = {t: fmt.prompt_ids(p) for t, p in zip(texts, prompts)}
    mismatched = [t for t, ids in zip(texts, tokenizer(texts)["input_ids"]) if ids != ids_of[t]]
    if mismatched:
        raise SystemExit(f"{len(mismatched)} prompts tokenise differently for TRL, e.g. {mismatched[0]!r}")
    scored = {"rollouts": 0}

    def rm_reward(prompts, completions, completion_ids, **kwargs):
        rollouts = [Rollout(prompt_id=f"trl{i}", prompt_ids=ids_of[p], response_ids=list(c), logprobs=[0.0] * len(c),
                            policy_version=0, finish_reason="eos" if c and c[-1] == tokenizer.eos_token_id else "length",
                            sample_id=f"trl{scored['rollouts'] + i}")
                    for i, (p, c) in enumerate(zip(prompts, completion_ids))]
        out = judge.scorer.score(rollouts)
        if len(out) != len(rollouts):
            raise RuntimeError(f"the scorer quarantined {len(rollouts) - len(out)} TRL completions")
        scored["rollouts"] += len(rollouts)
        return [r.score for r in out]

    batch = cfg.ppo.batch_size
    args = GRPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=batch, num_generations=generations,
        gradient_accumulation_steps=1, max_completion_length=cfg.generation.max_new_tokens,
        temperature=cfg.generation.temperature, top_p=cfg.generation.top_p, learning_rate=cfg.ppo.lr,
        beta=cfg.ppo.kl_coef, max_steps=max_steps, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, bf16=use_bf16(cfg.train_precision, torch.device("cpu")), seed=cfg.seed,
        lr_scheduler_type="constant", warmup_steps=0, dataloader_num_workers=0, disable_tqdm=True,
    )

    class Clock(TrainerCallback):
        """Stops training after `seconds` of training (evaluation pauses excluded); evaluates on the way."""

        def __init__(self):
            self.train_s, self.step_s, self.curve, self._t = 0.0, [], [(0.0, 0.5)], None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            dt = time.perf_counter() - self._t
            self.train_s += dt
            self.step_s.append(dt)
            if eval_every and state.global_step % eval_every == 0:
                model.save_pretrained(workdir / "trl-eval")
                tokenizer.save_pretrained(workdir / "trl-eval")
                self.curve.append((self.train_s, judge(workdir / "trl-eval")["win_rate_vs_sft"]))
                torch.set_num_threads(threads)
            if self.train_s >= seconds:
                control.should_training_stop = True

    model = AutoModelForCausalLM.from_pretrained(paths.model("sft"), dtype=torch.float32, attn_implementation=attention)
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=rm_reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": texts}).shuffle(seed=cfg.seed),
                          callbacks=[clock])
    trainer.train()
    out = workdir / "trl-final"
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    steps = len(clock.step_s)
    return {"samples_per_s": steps * batch / clock.train_s, "s_per_step": float(np.median(clock.step_s[1:])),
            "steps": steps, "wall_s": clock.train_s, "curve": clock.curve, "checkpoint": str(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run directory with models/sft and models/rm")
    parser.add_argument("--steps", type=int, default=60, help="learner steps of raylhf async (its wall clock is TRL's)")
    parser.add_argument("--sync-steps", type=int, default=40, help="learner steps of raylhf sync")
    parser.add_argument("--generations", type=int, default=8, help="TRL completions per prompt (GRPO's group)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the TRL process (the machine's cores)")
    parser.add_argument("--eval-every", type=int, default=20, help="learner / optimiser steps between evaluations")
    parser.add_argument("--eval-prompts", type=int, default=300)
    parser.add_argument("--trl-attention", default="sdpa", choices=("sdpa", "eager"),
                        help="attention kernel of TRL's policy (transformers' default: sdpa)")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS),
                        help="which runs, in this order (TRL trains for as long as raylhf async did; without "
                             "async, for --steps optimiser steps)")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("overrides", nargs="*", help="config overrides (raylhf runs; TRL takes lr, β, lengths)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vs_trl.json")
    args = parser.parse_args()

    from raylhf.configs.loader import load_config
    from raylhf.contracts.dataio import read_records
    from raylhf.contracts.records import Prompt
    from raylhf.orchestration.paths import RunPaths

    results = {}
    with scratch_run(args.run, ["data", "models/sft", "models/rm"]) as run:
        paths = RunPaths(run)
        cfg = load_config(args.config, [*args.overrides, *run_overrides(run)])
        heldout, _ = read_records(paths.prompts("heldout"), Prompt)
        torch.set_num_threads(args.threads)
        judge = Judge(cfg, paths, heldout[: args.eval_prompts], args.threads)
        for system in args.systems:
            if system == "trl":
                budget = results["raylhf async"]["wall_s"] if "raylhf async" in results else None
                results[SYSTEMS[system]] = run_trl(cfg, paths, judge, budget or float("inf"), args.generations,
                                                   args.threads, args.eval_every, run,
                                                   max_steps=10 * args.steps if budget else args.steps,
                                                   attention=args.trl_attention)
            else:
                results[SYSTEMS[system]] = run_raylhf(cfg, paths, system, args.steps if system == "async" else
                                                      args.sync_steps, args.eval_every, args.eval_prompts,
                                                      run / f"raylhf-{system}")
        torch.set_num_threads(args.threads)
        for name, r in results.items():
            r["final"] = judge(r["checkpoint"])
    print(f"\n{'run':<14}{'samples/s':>11}{'s/step':>9}{'steps':>7}{'train s':>9}{'win vs SFT':>12}{'RM score':>10}")
    for name, r in results.items():
        print(f"{name:<14}{r['samples_per_s']:>11.1f}{r['s_per_step']:>9.3f}{r['steps']:>7}{r['wall_s']:>9.1f}"
              f"{r['final']['win_rate_vs_sft']:>12.3f}{r['final']['rm_score']:>10.3f}")
    if {"raylhf async", "TRL GRPO"} <= results.keys():
        print(f"raylhf async / TRL GRPO samples/s: "
              f"{results['raylhf async']['samples_per_s'] / results['TRL GRPO']['samples_per_s']:.2f}x")
    print("\nwin rate over SFT against training wall-clock (s, win rate):")
    for name, r in results.items():
        print(f"  {name:<14}" + "  ".join(f"({t:.0f}, {w:.3f})" for t, w in r["curve"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "overrides": args.overrides, "runs": results}, indent=2))


if __name__ == "__main__":
    main()

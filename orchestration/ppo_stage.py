"""Stage 3, PPO-ptx: `run_ppo` builds the actors from the config, runs the driver, saves the policy.

The loop itself is `raylhf.orchestration.driver.PPODriver.run` (which also writes and restores the
checkpoints). Around it: `PPOActors` (start, replace and always stop the actors), `PPOCheckpoint`,
`StepReporter` (metrics log, progress bar, in-training evaluation after each learner step),
`InTrainingEval`, the live Prometheus metrics (`metrics_exporter`, with `metrics.enabled`), and `finish_ppo`
for a stage that stopped after its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from raylhf.actors.sampling import sampling_spec
from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.contracts.dataio import read_records
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.protocols import GenerationRequest, Labeler, SamplingSpec, Task
from raylhf.contracts.records import Document, Prompt, Rollout
from raylhf.learners.pretrain import pack_documents
from raylhf.learners.training import MetricsLog
from raylhf.orchestration.actor_set import PPOActors
from raylhf.orchestration.cursor import PromptCursor
from raylhf.orchestration.driver import PPODriver
from raylhf.orchestration.metrics_exporter import serve_ppo_metrics
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.ppo_checkpoint import PPOCheckpoint
from raylhf.orchestration.preflight import Skipped, check_ppo_inputs, load_format, policy_prompts
from raylhf.orchestration.provenance import provenance
from raylhf.orchestration.ray_runtime import init_ray
from raylhf.orchestration.run_stats import StepObservers
from raylhf.tasks import load_task

# The driver's supervised generate call (`PPODriver.generate`): per request, its rollouts or None if refused.
Generate = Callable[[list[GenerationRequest], SamplingSpec], list[list[Rollout] | None]]

log = logging.getLogger(__name__)


class InTrainingEval:
    """Win rate of the current policy over the SFT policy on fixed held-out prompts, while training.

    The SFT responses are sampled once, before the first update, from a generator that still holds
    the SFT weights; later rounds sample the same prompts from a generator holding the newest weights.
    `generate` is the driver's supervised call (`PPODriver.generate`): a generator lost during an evaluation
    is replaced, and the evaluation goes on, as the loop does.
    """

    def __init__(self, task: Task, labeler: Labeler, fmt: PromptFormat, prompts: list[Prompt], sampling: SamplingSpec):
        self.task, self.labeler, self.fmt = task, labeler, fmt
        self.prompts, self.sampling = prompts, fmt.sampling(sampling)
        self.requests = [GenerationRequest(p.prompt_id, tuple(fmt.prompt_ids(p))) for p in prompts]
        self.reference: list[str] | None = None

    def _sample(self, generate: Generate) -> tuple[list[str], int]:
        results = generate(self.requests, self.sampling)
        texts, versions = [], []
        for r in results:
            served = isinstance(r, list) and bool(r)  # a refused request counts as an empty response
            texts.append(self.fmt.decode_response(r[0].response_ids) if served else "")
            if served:
                versions.append(r[0].policy_version)
        return texts, max(versions, default=0)

    def start(self, generate: Generate) -> dict[str, float]:
        self.reference, _ = self._sample(generate)
        return {"eval_utility": self._utility(self.reference), "eval_win_rate_vs_sft": 0.5}

    def __call__(self, generate: Generate) -> dict[str, float]:
        texts, version = self._sample(generate)
        prefs = [self.labeler.prefer(p.prompt, a, b) for p, a, b in zip(self.prompts, texts, self.reference)]
        return {"eval_win_rate_vs_sft": float(np.mean(prefs)), "eval_utility": self._utility(texts),
                "eval_version": version}

    def _utility(self, texts: list[str]) -> float:
        return float(np.mean([self.task.utility(p.prompt, t) for p, t in zip(self.prompts, texts)]))


class StepReporter:
    """After each learner step: the true utility of the batch, in-training evaluation (`ppo.eval_every`), the
    metrics log and the progress bar. After a rewind to a checkpoint, the rows logged past it are dropped."""

    def __init__(self, cfg: RunConfig, *, task: Task | None, fmt: PromptFormat, prompt_text: dict[str, str],
                 metrics_log: MetricsLog, bar: tqdm, evaluator: InTrainingEval | None, generate: Generate):
        self.p, self.task, self.fmt, self.prompt_text = cfg.ppo, task, fmt, prompt_text
        self.metrics_log, self.bar, self.evaluator, self.generate = metrics_log, bar, evaluator, generate
        self._utility: list[float] = []

    def on_rollouts(self, batch: list[Rollout]) -> None:
        # The labeler's hidden utility of what the policy actually produced: true quality, next to the RM score.
        # A run without a task has no ground truth, and logs none.
        if self.task is not None:
            self._utility = [self.task.utility(self.prompt_text[r.prompt_id], self.fmt.decode_response(r.response_ids))
                             for r in batch]

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        p = self.p
        metrics = dict(metrics)
        if self.task is not None:
            metrics["true_utility"] = float(np.mean(self._utility)) if self._utility else float("nan")
        metrics.pop("step", None)
        if self.evaluator is not None and (step % p.eval_every == 0 or step == p.total_steps):
            metrics.update(self.evaluator(self.generate))
        self.metrics_log(step, metrics)
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.3f}",
                             kl=f"{metrics.get('kl', float('nan')):.3f}",
                             **({"utility": f"{metrics['true_utility']:.3f}"} if "true_utility" in metrics else {}))

    def on_rewind(self, step: int) -> None:
        self.metrics_log.truncate_after(step)
        self.bar.n = step
        self.bar.refresh()


def pretrain_stream(cfg: RunConfig, paths: RunPaths, tokenizer) -> np.ndarray | None:
    """The packed pretraining corpus for the PPO-ptx term (None when `ppo.ptx_coef` is 0)."""
    if cfg.ppo.ptx_coef == 0:
        return None
    docs, _ = read_records(paths.corpus("train"), Document, on_bad_rows=cfg.data.on_bad_rows,
                           columns=cfg.data.columns.mapping())
    ids = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    return pack_documents(ids, tokenizer.bos_token_id, tokenizer.eos_token_id)


def run_ppo(cfg: RunConfig, paths: RunPaths, policy_path: Path, rm_path: Path, out: Path,
            with_eval: bool = True, resume: bool = False, fresh: bool = False,
            ref_path: Path | None = None, value_path: Path | None = None) -> dict[str, Any]:
    """Align `policy_path` against the reward model `rm_path` with PPO-ptx; save the policy to `out`.

    The KL reference is `ref_path`, by default `policy_path` itself (the SFT policy of the first PPO stage;
    an iteration round continues an aligned policy and keeps the SFT reference). The value function starts
    from `value_path`, by default the reward model. The in-training win rate is against the policy the stage
    starts from.

    With `resume`, continue from the run's newest PPO checkpoint up to `ppo.total_steps`: learner weights,
    optimisers, KL controller, prompt cursor (prompts that were in flight are issued again), sample ledger
    and reward normaliser are restored. With `fresh`, an existing checkpoint is deleted and the stage starts
    over; with neither, an existing checkpoint is an error (a run is never restarted silently).
    """
    t0, p = time.time(), cfg.ppo
    checkpoint = PPOCheckpoint(paths.root, on_saved=paths.sync)
    check_checkpoint_choice(checkpoint, p.total_steps, resume, fresh)  # before anything starts
    check_ppo_inputs(cfg, paths, policy_path, rm_path)
    for path, key in ((ref_path, "KL reference"), (value_path, "value function")):
        if path is not None:
            require_checkpoint(path, key, weights=True)
    if fresh:
        checkpoint.clear()
    init_ray(cfg.ray)
    task = load_task(cfg.task)
    fmt = load_format(cfg, policy_path)
    tokenizer = fmt.tokenizer
    skipped: Skipped = {}
    prompts = policy_prompts(cfg, paths.prompts("train"), fmt, policy_path, skipped)  # each fits the context
    cursor = PromptCursor(prompts, cfg.seed)
    sampling = fmt.sampling(sampling_spec(cfg.generation, seed=cfg.seed))
    metrics_log = MetricsLog(paths.metrics, "ppo")
    if not resume:
        metrics_log.truncate_after(-1)  # rows of an earlier attempt of this stage

    live_metrics = serve_ppo_metrics(cfg.metrics, paths.root, max_staleness=p.max_staleness, run=cfg.name, mode=p.mode)
    with (live_metrics as live,
          PPOActors(cfg, policy_path=policy_path, rm_path=rm_path, pretrain_stream=pretrain_stream(cfg, paths, tokenizer),
                    rejects_path=paths.root / "rejects.jsonl", ref_path=ref_path, value_path=value_path) as actors):
        setup_s = time.time() - t0
        evaluator = None
        if with_eval and p.eval_every > 0 and task is not None:  # judged by the task's labeler and utility
            heldout, _ = read_records(paths.prompts("heldout"), Prompt, on_bad_rows=cfg.data.on_bad_rows,
                                      columns=cfg.data.columns.mapping())
            evaluator = InTrainingEval(task, task.labeler(cfg.eval.labeler_seed), fmt, heldout[: p.eval_prompts],
                                       dataclasses.replace(sampling, n=1, temperature=cfg.eval.temperature))
        start_step = checkpoint.step() if resume else 0
        bar = tqdm(total=p.total_steps, initial=start_step, desc=f"ppo ({p.mode})", unit="step", dynamic_ncols=True)
        driver = PPODriver(p, cfg.supervision, generators=actors.generators, learner=actors.learner, pool=actors.pool,
                           prompt_format=fmt, cursor=cursor, sampling=sampling, in_flight=cfg.generation.in_flight,
                           weight_updates=cfg.generation.weight_updates,
                           checkpoint=checkpoint, factory=actors, faults=actors.faults, resume=resume)
        if evaluator is not None:
            first = evaluator.start(driver.generate)  # the generators still hold the initial policy here
            if not resume:
                metrics_log(0, first)
        # The reporter evaluates through the driver's supervised generate call, so it is told after the driver exists.
        reporter = StepReporter(cfg, task=task, fmt=fmt, prompt_text={q.prompt_id: q.prompt for q in prompts},
                                metrics_log=metrics_log, bar=bar, evaluator=evaluator, generate=driver.generate)
        driver.observer = reporter if live is None else StepObservers(reporter, live)
        if live is not None:
            live.watch(driver.loop_state)
        try:
            stats = driver.run()
        finally:
            bar.close()  # before any error is reported, so the error is the last line
        if live is not None:
            live.finish(driver.loop_state())
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(checkpoint.policy_dir, out)
        weights_match = driver.generators_match_learner()
        placement, cpus = actors.placement(driver.generators, driver.learner.actor)

    summary = stats.summary(cfg.generation.num_generators, cfg.reward.num_actors)
    last = stats.metrics[-1] if stats.metrics else {}
    summary.update(setup_s=setup_s, seconds=time.time() - t0, generators_match_learner=weights_match, placement=placement,
                   cpus=cpus, skipped_rows=skipped,
                   final_reward=last.get("reward"), final_kl=last.get("kl"))
    summary.update(provenance(paths, checkpoint=out, inputs={
        "policy": policy_path, "rm": rm_path, "ref": ref_path, "value": value_path, "prompts": paths.prompts("train")}))
    return summary


def finish_ppo(paths: RunPaths, out: Path) -> dict[str, Any]:
    """A PPO stage whose last checkpoint is already at `ppo.total_steps` (it stopped before writing its
    summary): copy the policy out and summarise from the checkpoint, without training again."""
    checkpoint = PPOCheckpoint(paths.root)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(checkpoint.policy_dir, out)
    state = checkpoint.driver_state()
    return {"steps": int(state["steps"]), "finished_from_checkpoint": str(checkpoint.latest()),
            **{f"samples_{k}": v for k, v in state.get("ledger", {}).items()}, **provenance(paths, checkpoint=out)}


def check_checkpoint_choice(checkpoint: PPOCheckpoint, total_steps: int, resume: bool, fresh: bool) -> None:
    """A run with a checkpoint continues it (`resume`) or deletes it (`fresh`); never starts over silently."""

    step = checkpoint.step()
    if resume and fresh:
        raise ConfigError("--resume and --fresh exclude each other")
    if resume:
        if step is None:
            raise ConfigError(f"--resume: nothing to resume, no PPO checkpoint under {checkpoint.dir.parent}")
        if step >= total_steps:
            raise ConfigError(f"ppo.total_steps: the checkpoint in {checkpoint.latest()} is at step {step} already; "
                              f"set ppo.total_steps above it to continue")
    elif step is not None and not fresh:
        raise ConfigError(f"{checkpoint.latest()} holds a PPO checkpoint at step {step}: pass --resume to continue "
                          f"it, or --fresh to delete it and start over")

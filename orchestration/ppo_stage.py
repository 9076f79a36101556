"""Stage 3, PPO-ptx: build the actors from the config, run the driver, save the policy.

Setup happens here; the loop itself is `raylhf.orchestration.driver.PPODriver.run`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from raylhf.configs.schema import RunConfig
from raylhf.contracts.formatting import decode_response
from raylhf.contracts.protocols import GenerationRequest, SamplingSpec
from raylhf.contracts.records import Document, Prompt, Rollout
from raylhf.orchestration.paths import RunPaths

log = logging.getLogger(__name__)


class InTrainingEval:
    """Win rate of the current policy over the SFT policy on fixed held-out prompts, while training.

    The SFT responses are sampled once, before the first update, from a generator that still holds
    the SFT weights; later rounds sample the same prompts from a generator holding the newest weights.
    """

    def __init__(self, task, labeler, tokenizer, prompts: list[Prompt], sampling: SamplingSpec, timeout_s: float):
        from raylhf.contracts.formatting import encode_prompt

        self.task, self.labeler, self.tokenizer = task, labeler, tokenizer
        self.prompts, self.sampling, self.timeout_s = prompts, sampling, timeout_s
        self.requests = [GenerationRequest(p.prompt_id, tuple(encode_prompt(tokenizer, p.prompt))) for p in prompts]
        self.reference: list[str] | None = None

    def _sample(self, generator, name: str) -> tuple[list[str], int]:
        from raylhf.orchestration.driver import _get

        results = _get(generator.generate.remote(self.requests, self.sampling), "generate", name, self.timeout_s)
        texts, versions = [], []
        for r in results:
            served = isinstance(r, list) and bool(r)  # a refused request counts as an empty response
            texts.append(decode_response(self.tokenizer, r[0].response_ids) if served else "")
            if served:
                versions.append(r[0].policy_version)
        return texts, max(versions, default=0)

    def start(self, generator, name: str) -> dict[str, float]:
        self.reference, _ = self._sample(generator, name)
        return {"eval_utility": self._utility(self.reference), "eval_win_rate_vs_sft": 0.5}

    def __call__(self, generator, name: str) -> dict[str, float]:
        texts, version = self._sample(generator, name)
        prefs = [self.labeler.prefer(p.prompt, a, b) for p, a, b in zip(self.prompts, texts, self.reference)]
        return {"eval_win_rate_vs_sft": float(np.mean(prefs)), "eval_utility": self._utility(texts),
                "eval_version": version}

    def _utility(self, texts: list[str]) -> float:
        return float(np.mean([self.task.utility(p.prompt, t) for p, t in zip(self.prompts, texts)]))


def pretrain_stream(cfg: RunConfig, paths: RunPaths, tokenizer) -> np.ndarray | None:
    """The packed pretraining corpus for the PPO-ptx term (None when `ppo.ptx_coef` is 0)."""
    from raylhf.contracts.dataio import read_records
    from raylhf.learners.pretrain import pack_documents

    if cfg.ppo.ptx_coef == 0:
        return None
    docs, _ = read_records(paths.corpus("train"), Document, on_bad_rows=cfg.data.on_bad_rows)
    ids = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    return pack_documents(ids, tokenizer.bos_token_id, tokenizer.eos_token_id)


DRIVER_STATE = "driver_state.json"


def save_ppo_state(learner, cursor, step: int, state_dir: Path, timeout_s: float) -> None:
    """Checkpoint the learner and the prompt cursor into `state_dir`. It is written beside the previous
    checkpoint and swapped in only when complete, so a crash mid-save leaves a checkpoint to resume from."""
    from raylhf.orchestration.driver import _get

    tmp, old = state_dir.with_name(state_dir.name + ".tmp"), state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    _get(learner.save_checkpoint.remote(str(tmp)), "save_checkpoint", "learner", timeout_s)
    (tmp / DRIVER_STATE).write_text(json.dumps({"steps": step, "cursor": cursor.state_dict()}))  # written last
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        state_dir.rename(old)
    tmp.rename(state_dir)
    shutil.rmtree(old, ignore_errors=True)


def ppo_checkpoint(paths: RunPaths) -> Path | None:
    """The newest complete PPO checkpoint of the run (one interrupted mid-swap included), or None."""
    state_dir = paths.root / "checkpoints" / "ppo"
    for candidate in (state_dir, state_dir.with_name("ppo.tmp"), state_dir.with_name("ppo.old")):
        if (candidate / DRIVER_STATE).exists():
            return candidate
    return None


def ppo_resumable(paths: RunPaths, total_steps: int) -> bool:
    """Whether the run has a PPO checkpoint short of `total_steps` (an interrupted PPO stage)."""
    checkpoint = ppo_checkpoint(paths)
    return checkpoint is not None and json.loads((checkpoint / DRIVER_STATE).read_text())["steps"] < total_steps


def run_ppo(cfg: RunConfig, paths: RunPaths, policy_path: Path, rm_path: Path, out: Path,
            with_eval: bool = True, resume: bool = False) -> dict[str, Any]:
    """Align `policy_path` against the reward model `rm_path` with PPO-ptx; save the policy to `out`.

    With `resume`, continue from the run's last PPO checkpoint (`ppo.checkpoint_every`) up to
    `ppo.total_steps`: learner weights, optimisers, KL controller and prompt cursor are restored;
    `policy_path` stays the KL reference. Rollouts in flight at the interruption are not restored.
    """
    import ray

    from raylhf.actors.engines import threads_for
    from raylhf.actors.generator import start_generators
    from raylhf.actors.sampling import sampling_spec
    from raylhf.contracts.dataio import read_records
    from raylhf.learners.models import load_tokenizer
    from raylhf.learners.ppo import learner_settings
    from raylhf.learners.ppo_actor import PPOLearnerActor
    from raylhf.learners.training import MetricsLog
    from raylhf.orchestration.driver import DriverSettings, PPODriver, PromptCursor, _get
    from raylhf.orchestration.ray_runtime import init_ray
    from raylhf.reward_service.pool import RewardPool
    from raylhf.tasks import load_task

    t0 = time.time()
    init_ray(cfg.ray)
    task = load_task(cfg.task)
    tokenizer = load_tokenizer(policy_path, cfg.trust_remote_code)
    prompts, _ = read_records(paths.prompts("train"), Prompt, on_bad_rows=cfg.data.on_bad_rows,
                              max_prompt_chars=cfg.data.max_prompt_chars)
    prompt_text = {p.prompt_id: p.prompt for p in prompts}
    p = cfg.ppo
    _check_resources(cfg)
    start_step = 0
    if resume:  # checked before any actor starts
        checkpoint = ppo_checkpoint(paths)
        if checkpoint is None:
            raise FileNotFoundError(f"nothing to resume: no PPO checkpoint under {paths.root / 'checkpoints'}")
        state = json.loads((checkpoint / DRIVER_STATE).read_text())
        start_step = int(state["steps"])
        if start_step >= p.total_steps:
            from raylhf.configs.loader import ConfigError

            raise ConfigError(f"ppo.total_steps: the checkpoint in {checkpoint} is at step {start_step} already; "
                              f"set ppo.total_steps above it to continue")

    learner = PPOLearnerActor.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus).remote(
        learner_settings(cfg, policy_path, rm_path, pretrain_stream(cfg, paths, tokenizer),
                         torch_threads=threads_for(p.num_cpus)))
    generators = start_generators(cfg.generation, policy_path, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code)
    names = [f"generator-{i}" for i in range(len(generators))]
    pool = RewardPool.from_config(cfg.reward, default_rm_path=str(rm_path), default_ref_path=str(policy_path),
                                  trust_remote_code=cfg.trust_remote_code)
    _get(learner.ready.remote(), "start", "learner", p.timeout_s)
    cursor = PromptCursor(prompts, cfg.seed)
    start_version = 0
    if resume:
        start_version = _get(learner.load_checkpoint.remote(str(checkpoint)), "load_checkpoint", "learner", p.timeout_s)
        cursor.load_state_dict(state["cursor"])
        log.info("resuming PPO from %s at step %d (policy version %d)", checkpoint, start_step, start_version)
    setup_s = time.time() - t0

    sampling = sampling_spec(cfg.generation, seed=cfg.seed)
    metrics_log = MetricsLog(paths.metrics, "ppo")
    if resume:
        metrics_log.truncate_after(start_step)
    evaluator = None
    if with_eval and p.eval_every > 0:
        heldout, _ = read_records(paths.prompts("heldout"), Prompt, on_bad_rows=cfg.data.on_bad_rows)
        evaluator = InTrainingEval(task, task.labeler(cfg.eval.labeler_seed), tokenizer, heldout[: p.eval_prompts],
                                   dataclasses.replace(sampling, n=1, temperature=cfg.eval.temperature), p.timeout_s)
        first = evaluator.start(generators[0], names[0])  # the generators still hold the SFT policy here
        if not resume:
            metrics_log(0, first)

    bar = tqdm(total=p.total_steps, initial=start_step, desc=f"ppo ({p.mode})", unit="step", dynamic_ncols=True)
    state_dir = paths.root / "checkpoints" / "ppo"
    pending_utility: list[float] = []

    def on_rollouts(batch: list[Rollout]) -> None:
        # The labeler's hidden utility of what the policy actually produced: true quality, next to the RM score.
        pending_utility[:] = [task.utility(prompt_text[r.prompt_id], decode_response(tokenizer, r.response_ids))
                              for r in batch]

    def on_step(step: int, metrics: dict[str, Any]) -> None:
        metrics = dict(metrics, true_utility=float(np.mean(pending_utility)) if pending_utility else float("nan"))
        if evaluator is not None and (step % p.eval_every == 0 or step == p.total_steps):
            metrics.update(evaluator(generators[0], names[0]))
        metrics_log(step, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.3f}", kl=f"{metrics.get('kl', float('nan')):.3f}",
                        utility=f"{metrics['true_utility']:.3f}")
        if p.checkpoint_every and step % p.checkpoint_every == 0 and step < p.total_steps:
            save_ppo_state(learner, cursor, step, state_dir, p.timeout_s)

    driver = PPODriver(
        generators=generators, generator_names=names, pool=pool, learner=learner, tokenizer=tokenizer,
        cursor=cursor, sampling=sampling,
        settings=DriverSettings(total_steps=p.total_steps, rollouts_per_step=p.batch_size,
                                prompts_per_request=p.prompts_per_request, in_flight=cfg.generation.in_flight,
                                sync_every=p.sync_every, buffer_size=p.buffer_size, timeout_s=p.timeout_s,
                                mode=p.mode),
        on_step=on_step, on_rollouts=on_rollouts, start_step=start_step, start_version=start_version,
    )
    try:
        stats = driver.run()
        bar.close()
        save_ppo_state(learner, cursor, stats.steps, state_dir, p.timeout_s)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(state_dir / "policy", out)
        weights_match = driver.generators_match_learner()
    finally:
        pool.shutdown()
        for g in generators:
            ray.kill(g)
        ray.kill(learner)
    summary = stats.summary(len(generators))
    last = stats.metrics[-1] if stats.metrics else {}
    summary.update(setup_s=setup_s, seconds=time.time() - t0, generators_match_learner=weights_match,
                   final_reward=last.get("reward"), final_kl=last.get("kl"))
    return summary



def _check_resources(cfg: RunConfig) -> None:
    """Fail fast, naming the keys, when the actors cannot all be scheduled at once (they would wait forever)."""
    import ray

    need_cpu = (cfg.generation.num_generators * cfg.generation.num_cpus + cfg.reward.num_actors * cfg.reward.num_cpus
                + cfg.ppo.num_cpus)
    need_gpu = (cfg.generation.num_generators * cfg.generation.num_gpus + cfg.reward.num_actors * cfg.reward.num_gpus
                + cfg.ppo.num_gpus)
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) + 1e-9 or need_gpu > have.get("GPU", 0) + 1e-9:
        from raylhf.configs.loader import ConfigError

        raise ConfigError(
            f"the PPO actors need {need_cpu:g} CPUs and {need_gpu:g} GPUs (generation.num_generators x "
            f"generation.num_cpus + reward.num_actors x reward.num_cpus + ppo.num_cpus, same for GPUs) but the Ray "
            f"cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs")

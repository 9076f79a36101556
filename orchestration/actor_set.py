"""The PPO stage's actors as one unit: `PPOActors` (a context manager) and `check_resources`.

`PPOActors` starts the learner, the generators and the reward pool together (starting again an actor lost
while it starts), replaces lost ones for the driver (`respawn_generator`, `respawn_learner`), and always
stops every one it started, whether the stage ends, fails or is interrupted.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, TypeVar

import numpy as np

from raylhf.configs.schema import RunConfig
from raylhf.contracts import remote
from raylhf.contracts.protocols import ScoringPool
from raylhf.contracts.remote import ActorFailure, NamedActor

log = logging.getLogger(__name__)
T = TypeVar("T")


class PPOActors:
    """Learner, generators and reward pool of one PPO stage.

    ``with PPOActors(cfg, policy_path=..., rm_path=..., pretrain_stream=...) as actors:`` starts them
    all (the learner loads while the generators and scorers start) and waits until each is ready;
    leaving the block kills every actor that was started.
    """

    def __init__(self, cfg: RunConfig, *, policy_path: str | os.PathLike, rm_path: str | os.PathLike,
                 pretrain_stream: np.ndarray | None, rejects_path: str | os.PathLike | None = None):
        self.cfg, self.policy_path, self.rm_path = cfg, str(policy_path), str(rm_path)
        self.rejects_path = rejects_path
        self.pretrain_stream = pretrain_stream
        self.learner: NamedActor | None = None
        self.generators: list[NamedActor] = []
        self.pool: ScoringPool | None = None

    def __enter__(self) -> "PPOActors":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _start(self) -> None:
        from raylhf.actors.generator import start_generators
        from raylhf.reward_service.pool import RewardPool

        cfg = self.cfg
        check_resources(cfg)
        self.learner = self._spawn_learner()  # loads while the generators and scorers start
        self.generators = self._retrying("generators", lambda: start_generators(
            cfg.generation, self.policy_path, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
            ready_timeout_s=cfg.ppo.actor_startup_timeout_s))
        self.pool = RewardPool(cfg.reward, rm_path=self.rm_path, ref_path=self.policy_path,
                               trust_remote_code=cfg.trust_remote_code, rejects_path=self.rejects_path)
        self.learner_info = self._retrying("learner", self._learner_ready,
                                           again=self.respawn_learner_handle)

    def _learner_ready(self) -> dict[str, Any]:
        return remote.get(self.learner.handle.ready.remote(), actor=self.learner.name, what="start",
                          timeout_s=self.cfg.ppo.actor_startup_timeout_s)

    def _retrying(self, what: str, start: Callable[[], T], again: Callable[[], None] = lambda: None) -> T:
        """`start()`, again (after `again()`) when an actor died or hung while starting, up to
        `ppo.max_consecutive_restarts` more times (a killed or preempted process heals; a checkpoint that
        cannot load fails the same way each time and then ends the run with its cause)."""
        attempts = self.cfg.ppo.max_consecutive_restarts + 1
        for attempt in range(1, attempts + 1):
            try:
                return start()
            except ActorFailure as e:
                if e.kind == "error" or attempt == attempts:
                    raise
                log.warning("%s lost while starting (%s); starting again", what, e)
                again()

    def respawn_learner_handle(self) -> None:
        import ray

        ray.kill(self.learner.handle, no_restart=True)
        self.learner = self._spawn_learner()

    def _spawn_learner(self) -> NamedActor:
        from raylhf.actors.engines import threads_for
        from raylhf.learners.models import pick_device
        from raylhf.learners.ppo_actor import PPOLearnerActor
        from raylhf.learners.training import use_bf16

        cfg, p = self.cfg, self.cfg.ppo
        handle = PPOLearnerActor.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus).remote(
            p, self.policy_path, self.rm_path, name="learner",
            pretrain_stream=self.pretrain_stream if p.ptx_coef > 0 else None, seed=cfg.seed, device=cfg.device,
            bf16=use_bf16(cfg.train_precision, pick_device(cfg.device)), snapshot_dtype=cfg.generation.dtype,
            torch_threads=threads_for(p.num_cpus), trust_remote_code=cfg.trust_remote_code)
        return NamedActor("learner", handle)

    # -- ActorRespawner: replacements for lost actors ------------------------------------------------------
    def respawn_generator(self, index: int) -> NamedActor:
        """Kill generator `index` and create its replacement from the initial policy (not waited for)."""
        import ray

        from raylhf.actors.generator import spawn_generator

        ray.kill(self.generators[index].handle, no_restart=True)
        self.generators[index] = spawn_generator(self.cfg.generation, self.policy_path, index=index,
                                                 seed=self.cfg.seed, trust_remote_code=self.cfg.trust_remote_code)
        return self.generators[index]

    def respawn_learner(self) -> NamedActor:
        """Kill the learner and start a fresh one; returns once its models are loaded."""
        self.respawn_learner_handle()
        self.learner_info = self._learner_ready()
        return self.learner

    def stop(self) -> None:
        import ray

        if self.pool is not None:
            self.pool.shutdown()
        for actor in self.generators + ([self.learner] if self.learner is not None else []):
            ray.kill(actor.handle, no_restart=True)
        self.pool, self.generators, self.learner = None, [], None


def check_resources(cfg: RunConfig) -> None:
    """Fail fast, naming the keys, when the actors cannot all be scheduled at once (they would wait forever)."""
    import ray

    from raylhf.configs.loader import ConfigError

    g, r, p = cfg.generation, cfg.reward, cfg.ppo
    need_cpu = g.num_generators * g.num_cpus + r.num_actors * r.num_cpus + p.num_cpus
    need_gpu = g.num_generators * g.num_gpus + r.num_actors * r.num_gpus + p.num_gpus
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0) + 1e-9 or need_gpu > have.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"the PPO actors need {need_cpu:g} CPUs and {need_gpu:g} GPUs (generation.num_generators x "
            f"generation.num_cpus + reward.num_actors x reward.num_cpus + ppo.num_cpus, same for GPUs) but the Ray "
            f"cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs")

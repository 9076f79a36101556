"""The PPO stage's actors as one unit: `PPOActors` (a context manager) and `check_resources`.

`PPOActors` starts the learner, the generators and the reward pool together (starting again an actor lost
while it starts), starts replacements for the driver's supervision (`spawn_generator`, `spawn_learner`: the
`ActorFactory` seam), and always stops every actor it started, whether the stage ends, fails or is interrupted.
The pool and the driver record their faults in one `FaultLog` (`faults`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
from typing import Any, Callable, TypeVar

import numpy as np
import ray

from raylhf.actors.engines import threads_for
from raylhf.actors.generator import spawn_generator, start_generators
from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.contracts import remote
from raylhf.contracts.model_files import ModelFiles, share_dir
from raylhf.contracts.protocols import ActorInfo, ScoringPool
from raylhf.contracts.remote import ActorFailure, NamedActor
from raylhf.contracts.supervision import FaultLog
from raylhf.learners.models import pick_device
from raylhf.learners.ppo_actor import PPOLearnerActor
from raylhf.learners.training import use_bf16
from raylhf.reward_service.pool import RewardPool

log = logging.getLogger(__name__)
T = TypeVar("T")


class PPOActors:
    """Learner, generators and reward pool of one PPO stage.

    ``with PPOActors(cfg, policy_path=..., rm_path=..., pretrain_stream=...) as actors:`` starts them
    all (the learner loads while the generators and scorers start) and waits until each is ready;
    leaving the block kills every actor that was started. The policy starts from `policy_path`, which is
    also the KL reference unless `ref_path` names another (an iteration round continues its policy and
    keeps the SFT reference); the value function starts from `value_path`, by default the reward model.
    """

    def __init__(self, cfg: RunConfig, *, policy_path: str | os.PathLike, rm_path: str | os.PathLike,
                 pretrain_stream: np.ndarray | None, rejects_path: str | os.PathLike | None = None,
                 ref_path: str | os.PathLike | None = None, value_path: str | os.PathLike | None = None):
        self.cfg, self.policy_path, self.rm_path = cfg, str(policy_path), str(rm_path)
        self.ref_path = str(ref_path) if ref_path is not None else None
        self.value_path = str(value_path) if value_path is not None else None
        self.rejects_path = rejects_path
        self.pretrain_stream = pretrain_stream
        self.policy_files: ModelFiles | None = None  # the checkpoints as every node reads them, set at start
        self.rm_files: ModelFiles | None = None
        self.ref_files: ModelFiles | None = None
        self.value_files: ModelFiles | None = None
        self.learner: NamedActor | None = None
        self.generators: list[NamedActor] = []
        self.pool: ScoringPool | None = None
        self.faults = FaultLog()
        self._started: list[NamedActor] = []  # every generator and learner, replacements included, to stop

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
        cfg = self.cfg
        check_resources(cfg)
        self.policy_files, self.rm_files = share_dir(self.policy_path), share_dir(self.rm_path)
        self.ref_files = share_dir(self.ref_path) if self.ref_path is not None else self.policy_files
        self.value_files = share_dir(self.value_path) if self.value_path is not None else self.rm_files
        self.learner = self.spawn_learner()  # loads while the generators and scorers start
        # The scorers start beside the generators (each kind waits for its own to load, a few seconds apiece):
        # a thread of the driver waits for the pool while this one waits for the generators.
        starting = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="scorers-start")
        pool = starting.submit(RewardPool, cfg.reward, rm_path=self.rm_files, ref_path=self.ref_files,
                               trust_remote_code=cfg.trust_remote_code, rejects_path=self.rejects_path,
                               supervision=cfg.supervision.policy("scorer"), faults=self.faults)
        starting.shutdown(wait=False)
        try:
            self.generators = self._retrying("generators", lambda: start_generators(
                cfg.generation, self.policy_files, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code,
                ready_timeout_s=cfg.supervision.policy("generator").startup_timeout_s), "generator")
        except BaseException:
            # The pool is then stopped with the rest (`stop`); its own failure, if any, does not hide theirs.
            with contextlib.suppress(BaseException):
                self.pool = pool.result()
            raise
        self._started += self.generators
        self.pool = pool.result()
        self._retrying("learner", self._learner_ready, "learner", again=self._restart_learner)

    def _learner_ready(self) -> ActorInfo:
        return remote.get(self.learner.handle.ready.remote(), actor=self.learner.name, what="start",
                          timeout_s=self.cfg.supervision.policy("learner").startup_timeout_s)

    def _restart_learner(self) -> None:
        remote.kill(self.learner.handle)
        self.learner = self.spawn_learner()

    def _retrying(self, what: str, start: Callable[[], T], kind: str, again: Callable[[], None] = lambda: None) -> T:
        """`start()`, again (after `again()`) when an actor died or hung while starting, up to the kind's
        `supervision.max_consecutive_restarts` more times (a killed or preempted process heals; a checkpoint
        that cannot load fails the same way each time and then ends the run with its cause)."""
        attempts = self.cfg.supervision.policy(kind).max_consecutive_restarts + 1
        for attempt in range(1, attempts + 1):
            try:
                return start()
            except ActorFailure as e:
                if e.kind == "error" or attempt == attempts:
                    raise
                log.warning("%s lost while starting (%s); starting again", what, e)
                again()

    def placement(self, generators: list[NamedActor], learner: NamedActor) -> tuple[dict[str, str], dict[str, list[int]]]:
        """Where each actor runs, by actor name (read from the live actors: the driver's, replacements
        included): its Ray node id, and the CPU ids its process may run on (all of the node's unless pinned:
        `generation.cpus`, `reward.cpus`, `ppo.cpus`)."""
        actors = [*generators, learner]
        infos = remote.get_all([a.handle.ready.remote() for a in actors], [a.name for a in actors], "ready",
                               self.cfg.supervision.policy("learner").call_timeout_s)
        infos = [*infos, *self.pool.actor_info]
        return {i.name: i.node_id for i in infos}, {i.name: i.cpus for i in infos}

    def spawn_learner(self) -> NamedActor:
        """A new learner on the initial checkpoints (not waited for: calls on it run once it has loaded)."""
        cfg, p = self.cfg, self.cfg.ppo
        handle = PPOLearnerActor.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus, resources=dict(p.resources)).remote(
            p, self.policy_files, self.value_files, name="learner",
            pretrain_stream=self.pretrain_stream if p.ptx_coef > 0 else None, seed=cfg.seed, device=cfg.device,
            bf16=use_bf16(cfg.train_precision, pick_device(cfg.device)), snapshot_dtype=cfg.generation.dtype,
            torch_threads=threads_for(p.num_cpus), trust_remote_code=cfg.trust_remote_code)
        actor = NamedActor("learner", handle)
        self._started.append(actor)
        return actor

    # -- ActorFactory: replacements for lost actors -------------------------------------------------------
    def spawn_generator(self, index: int) -> NamedActor:
        """A new generator `index` on the initial policy (not waited for)."""
        actor = spawn_generator(self.cfg.generation, self.policy_files, index=index, seed=self.cfg.seed,
                                trust_remote_code=self.cfg.trust_remote_code)
        self._started.append(actor)
        return actor

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        for actor in self._started:  # killing one that is already gone is a no-op
            remote.kill(actor.handle)
        self.pool, self.generators, self.learner, self._started = None, [], None, []


def actor_demands(cfg: RunConfig) -> list[tuple[str, int, dict[str, float]]]:
    """`(config section, actor count, Ray resources of one actor)` for each kind of PPO actor."""
    g, r, p = cfg.generation, cfg.reward, cfg.ppo
    return [(section, count, {"CPU": s.num_cpus, "GPU": s.num_gpus, **s.resources})
            for section, count, s in (("generation", g.num_generators, g), ("reward", r.num_actors, r), ("ppo", 1, p))]


def check_resources(cfg: RunConfig) -> None:
    """Fail fast, naming the keys, when the actors cannot all be scheduled at once (they would wait forever):
    the cluster's totals must cover every actor, and each actor must fit on one of its nodes."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    check_fit(actor_demands(cfg), ray.cluster_resources(), nodes)


def check_fit(demands: list[tuple[str, int, dict[str, float]]], totals: dict[str, float],
              nodes: list[dict[str, float]]) -> None:
    """`check_resources` on given cluster totals and per-node resources (pure, for tests)."""
    def keys(section: str, name: str) -> str:
        return {"CPU": f"{section}.num_cpus", "GPU": f"{section}.num_gpus"}.get(name, f"{section}.resources.{name}")

    problems = []
    for name in sorted({k for _, _, d in demands for k, v in d.items() if v > 0}):
        parts = [(section, count, d[name]) for section, count, d in demands if d.get(name, 0) > 0]
        need = sum(count * amount for _, count, amount in parts)
        if need > totals.get(name, 0) + 1e-9:
            terms = " + ".join(f"{count} x {keys(section, name)} = {count} x {amount:g}" for section, count, amount in parts)
            problems.append(f"{name}: the PPO actors need {need:g} ({terms}) but the Ray cluster has "
                            f"{totals.get(name, 0):g}")
    for section, _, demand in demands:
        wanted = {k: v for k, v in demand.items() if v > 0}
        if not any(all(node.get(k, 0) + 1e-9 >= v for k, v in wanted.items()) for node in nodes):
            problems.append(f"{section}: no node has all of one actor's resources {wanted} at once "
                            f"({', '.join(keys(section, k) for k in wanted)})")
    if problems:
        raise ConfigError("cannot place the PPO actors: " + "; ".join(problems))

"""The PPO driver: prompts -> generators -> reward pool -> bounded buffer -> learner -> weights back.

`PPODriver.run` holds the one top-level loop. In `ppo.mode: async` each pass through it moves work one
hop along the dataflow, a timer per phase::

    dispatch_generate -> wait -> collect_generate -> score -> train -> check_weights

Generators keep `generation.in_flight` requests queued, finished rollouts go to the reward pool, scored
rollouts wait in a bounded buffer, and the learner trains on a batch as soon as it is idle and a batch
is ready. Every `ppo.sync_every` learner steps the learner publishes a snapshot that each generator
applies before its next generate call. When the rollouts in the system reach `ppo.buffer_size`, no new
generation starts (backpressure), which bounds both memory and staleness. `Pipeline` holds what is in
flight between the hops.

`mode: sync` runs the same components strictly in sequence (generate -> score -> train -> publish ->
apply); it is the baseline of every throughput claim.

Every remote wait has a deadline (`raylhf.contracts.remote`); a failure in any actor surfaces here as an
`ActorFailure` naming the actor and the cause.

Also here: `PhaseTimer`, `RunStats` (what the loop measured) and `StepObserver` (the per-step hook).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import ray

from raylhf.configs.schema import PPOConfig
from raylhf.contracts import remote
from raylhf.contracts.formatting import encode_prompt
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec, ScoringPool
from raylhf.contracts.records import Rollout
from raylhf.contracts.remote import ActorFailure, NamedActor
from raylhf.orchestration.cursor import PromptCursor

log = logging.getLogger(__name__)


class PhaseTimer:
    """Wall seconds spent in each labelled phase of the loop."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0


class StepObserver(Protocol):
    """What the driver reports after each learner step (the stage's progress bar, metrics log, checkpoints)."""

    def on_rollouts(self, batch: list[Rollout]) -> None:
        """The batch the learner just trained on."""
        ...

    def on_step(self, step: int, metrics: dict[str, Any]) -> None: ...


class _SilentObserver:
    def on_rollouts(self, batch: list[Rollout]) -> None:
        pass

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        pass


@dataclass
class RunStats:
    """What the loop measured; the driver returns it and the benchmark reads it."""

    steps: int = 0
    rollouts: int = 0
    response_tokens: int = 0
    wall_s: float = 0.0
    generator_busy_s: float = 0.0
    learner_busy_s: float = 0.0
    staleness: collections.Counter = field(default_factory=collections.Counter)
    refused: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    final_version: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, n_generators: int) -> dict[str, Any]:
        wall = max(self.wall_s, 1e-9)
        return {
            "steps": self.steps,
            "rollouts": self.rollouts,
            "samples_per_s": self.rollouts / wall,
            "tokens_per_s": self.response_tokens / wall,
            "generator_busy": self.generator_busy_s / (wall * max(n_generators, 1)),
            "learner_busy": self.learner_busy_s / wall,
            "staleness_histogram": {int(k): int(v) for k, v in sorted(self.staleness.items())},
            "max_staleness_seen": max(self.staleness) if self.staleness else 0,
            "refused_prompts": self.refused,
            "wall_s": self.wall_s,
            "phase_s": {k: round(v, 3) for k, v in self.phases.items()},
            "final_version": self.final_version,
        }


@dataclass
class Pipeline:
    """What is in flight between the hops of the async loop."""

    n_generators: int
    generating: dict[Any, tuple[int, float]] = field(default_factory=dict)  # generate ref -> (generator, submitted)
    to_score: collections.deque[list[Rollout]] = field(default_factory=collections.deque)  # generated, not yet sent
    scoring: int = 0  # rollouts inside the reward pool
    buffer: collections.deque[Rollout] = field(default_factory=collections.deque)  # scored, waiting for the learner
    train_ref: Any = None  # the learner's running train_step
    train_batch: list[Rollout] = field(default_factory=list)
    train_t0: float = 0.0

    def __post_init__(self):
        self.queued = [0] * self.n_generators  # generate calls queued per generator
        self.busy_until = [0.0] * self.n_generators  # for busy-time accounting of back-to-back calls

    def rollouts_in_system(self, rollouts_per_call: int) -> int:
        return (rollouts_per_call * len(self.generating) + sum(map(len, self.to_score)) + self.scoring
                + len(self.buffer))


class PPODriver:
    """Owns the actors' handles, the prompt cursor and the loop; the caller builds the components.

    Args:
        cfg: the `ppo` section (steps, batch and request sizes, buffer, sync cadence, deadline, mode).
        generators: generator actors serving `GeneratorService`.
        learner: the learner actor serving `LearnerService`.
        pool: the scoring pool.
        tokenizer: encodes prompts (`encode_prompt`).
        cursor: where the prompts come from.
        sampling: how generators sample.
        in_flight: generate calls each generator keeps queued (`generation.in_flight`).
        observer: told about every learner step.
        start_step, start_version: a resumed run's step and policy version.
    """

    def __init__(self, cfg: PPOConfig, *, generators: Sequence[NamedActor], learner: NamedActor, pool: ScoringPool,
                 tokenizer, cursor: PromptCursor, sampling: SamplingSpec, in_flight: int,
                 observer: StepObserver | None = None, start_step: int = 0, start_version: int = 0):
        self.cfg, self.generators, self.learner, self.pool = cfg, list(generators), learner, pool
        self.tokenizer, self.cursor, self.sampling, self.in_flight = tokenizer, cursor, sampling, in_flight
        self.observer = observer or _SilentObserver()
        self.timer = PhaseTimer()
        self.stats = RunStats()
        self.stats.steps = start_step  # > 0 when resuming: the loop runs on to cfg.total_steps
        self.version = start_version
        self.snapshot_ref = None  # newest published snapshot (kept for the final weight check)
        self._weight_refs: list[tuple[Any, str]] = []  # pending load_weights calls, with the generator's name

    def run(self) -> RunStats:
        self._t0 = time.perf_counter()
        if self.version > 0:
            # Resumed learner: the generators start from the initial policy, so hand them its weights first
            # (and a version they share with the learner, or every rollout would look stale).
            with self.timer("publish"):
                self._publish()
        try:
            (self._run_sync if self.cfg.mode == "sync" else self._run_async)()
        finally:
            self.stats.wall_s = time.perf_counter() - self._t0
            self.stats.phases = dict(self.timer.seconds)
            self.stats.final_version = self.version
        if self.stats.steps % self.cfg.sync_every:
            self._publish()  # the generators end on the final weights
        self._check_weight_loads(block=True)
        return self.stats

    # -- sync: the baseline ---------------------------------------------------------------------------
    def _run_sync(self) -> None:
        calls = max(1, self.cfg.batch_size // (self.sampling.n * len(self.generators) * self.cfg.prompts_per_request))
        while self.stats.steps < self.cfg.total_steps:
            with self.timer("generate"):
                t0 = time.perf_counter()
                refs = [g.handle.generate.remote(self._requests(), self.sampling)
                        for g in self.generators for _ in range(calls)]
                names = [g.name for g in self.generators for _ in range(calls)]
                rollouts = [r for result in remote.get_all(refs, names, "generate", self.cfg.timeout_s)
                            for r in self._unpack(result)]
                self.stats.generator_busy_s += (time.perf_counter() - t0) * len(self.generators)
            with self.timer("score"):
                scored = self.pool.score(rollouts)
            with self.timer("train"):
                t0 = time.perf_counter()
                metrics = self._get(self.learner, self.learner.handle.train_step.remote(scored), "train_step")
                learner_s = time.perf_counter() - t0
            self._after_step(scored, metrics, learner_s)
            with self.timer("apply_weights"):
                self._check_weight_loads(block=True)

    # -- async: the actor/learner pipeline ------------------------------------------------------------
    def _run_async(self) -> None:
        work = Pipeline(len(self.generators))
        while self.stats.steps < self.cfg.total_steps:
            with self.timer("dispatch_generate"):
                self._dispatch_generate(work)
            with self.timer("wait"):
                done = self._wait(work)
            with self.timer("collect_generate"):
                self._collect_generated(work, done)
            with self.timer("score"):
                self._score(work)
            with self.timer("train"):
                self._train(work, done)
            with self.timer("check_weights"):
                self._check_weight_loads(block=False)
        self._drain(work)

    def _dispatch_generate(self, work: Pipeline) -> None:
        """Top up every generator's queue, unless the system already holds `buffer_size` rollouts."""
        per_call = self.cfg.prompts_per_request * self.sampling.n
        in_system = work.rollouts_in_system(per_call)
        for i, g in enumerate(self.generators):
            while work.queued[i] < self.in_flight and in_system + per_call <= self.cfg.buffer_size:
                work.generating[g.handle.generate.remote(self._requests(), self.sampling)] = (i, time.perf_counter())
                work.queued[i] += 1
                in_system += per_call

    def _wait(self, work: Pipeline) -> set:
        """Wait briefly for a generate call or the train step to finish (the pool is polled separately)."""
        watch = list(work.generating) + ([work.train_ref] if work.train_ref is not None else [])
        if not watch:
            return set()
        done, _ = ray.wait(watch, num_returns=1, timeout=0.02)
        return set(done)

    def _collect_generated(self, work: Pipeline, done: set) -> None:
        for ref in [r for r in work.generating if r in done]:
            i, submitted = work.generating.pop(ref)
            work.queued[i] -= 1
            now = time.perf_counter()
            self.stats.generator_busy_s += now - max(submitted, work.busy_until[i])
            work.busy_until[i] = now
            work.to_score.append(self._unpack(self._get(self.generators[i], ref, "generate")))

    def _score(self, work: Pipeline) -> None:
        while work.to_score and self.pool.has_capacity():
            batch = work.to_score.popleft()
            self.pool.submit(batch, block=False)
            work.scoring += len(batch)
        for _, scored in self.pool.ready(timeout=0.0):
            work.scoring -= len(scored)
            work.buffer.extend(scored)

    def _train(self, work: Pipeline, done: set) -> None:
        """Finish the learner's step if it is done; start the next one as soon as a batch is buffered."""
        if work.train_ref is not None and work.train_ref in done:
            metrics = self._get(self.learner, work.train_ref, "train_step")
            self._after_step(work.train_batch, metrics, time.perf_counter() - work.train_t0)
            work.train_ref = None
        if work.train_ref is None and len(work.buffer) >= self.cfg.batch_size and self.stats.steps < self.cfg.total_steps:
            work.train_batch = [work.buffer.popleft() for _ in range(self.cfg.batch_size)]
            work.train_ref, work.train_t0 = self.learner.handle.train_step.remote(work.train_batch), time.perf_counter()

    def _drain(self, work: Pipeline) -> None:
        """Let queued generate calls finish so the actors are idle and consistent."""
        for ref, (i, _) in list(work.generating.items()):
            self._get(self.generators[i], ref, "generate")

    # -- steps shared by both modes -------------------------------------------------------------------
    def _get(self, actor: NamedActor, ref, what: str):
        return remote.get(ref, actor=actor.name, what=what, timeout_s=self.cfg.timeout_s)

    def _requests(self) -> list[GenerationRequest]:
        prompts = self.cursor.take(self.cfg.prompts_per_request)
        return [GenerationRequest(p.prompt_id, tuple(encode_prompt(self.tokenizer, p.prompt))) for p in prompts]

    def _unpack(self, results) -> list[Rollout]:
        rollouts = []
        for r in results:
            if isinstance(r, RequestError):
                self.stats.refused += 1
                log.warning("prompt %s refused: %s", r.prompt_id, r.reason)
            else:
                rollouts.extend(r)
        return rollouts

    def _after_step(self, batch: list[Rollout], metrics: dict[str, Any], learner_s: float) -> None:
        self.stats.steps += 1
        self.stats.learner_busy_s += learner_s
        self.stats.rollouts += len(batch)
        self.stats.response_tokens += sum(len(r.response_ids) for r in batch)
        for r in batch:
            self.stats.staleness[self.version - r.policy_version] += 1
        self.observer.on_rollouts(batch)
        metrics = dict(metrics, version=self.version, wall_s=time.perf_counter() - self._t0)
        self.stats.metrics.append(metrics)
        self.observer.on_step(self.stats.steps, metrics)
        if self.stats.steps % self.cfg.sync_every == 0:
            with self.timer("publish"):
                self._publish()

    def _publish(self) -> None:
        from raylhf.actors.generator import broadcast_weights

        self._check_weight_loads(block=False)
        self.version, self.snapshot_ref = self._get(self.learner, self.learner.handle.publish.remote(), "publish")
        refs = broadcast_weights(self.generators, self.snapshot_ref)
        self._weight_refs.extend(zip(refs, [g.name for g in self.generators]))

    def _check_weight_loads(self, block: bool) -> None:
        """Surface failed weight loads; with block=True wait until every generator applied the newest."""
        if not self._weight_refs:
            return
        refs = [r for r, _ in self._weight_refs]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=self.cfg.timeout_s if block else 0)
        finished = set(done)
        remaining = []
        for ref, name in self._weight_refs:
            if ref in finished:
                remote.get(ref, actor=name, what="load_weights", timeout_s=self.cfg.timeout_s)
            else:
                remaining.append((ref, name))
        if block and remaining:
            raise ActorFailure(remaining[0][1], "load_weights", f"no answer within {self.cfg.timeout_s:g} s", "timeout")
        self._weight_refs = remaining

    def generators_match_learner(self) -> bool:
        """Whether every generator computes with exactly the newest published weights (read back)."""
        from raylhf.contracts.snapshot import snapshot_checksums

        if self.snapshot_ref is None:
            return True
        expected = snapshot_checksums(self._get(self.learner, self.snapshot_ref, "snapshot"))
        got = remote.get_all([g.handle.checksums.remote() for g in self.generators],
                             [g.name for g in self.generators], "checksums", self.cfg.timeout_s)
        return all({k: g.get(k) for k in expected} == expected for g in got)

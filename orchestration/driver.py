"""The PPO driver: prompts -> generators -> reward pool -> bounded buffer -> learner -> weights back.

`AsyncDriver.run` is the one top-level loop; each pass through it moves work one hop along the
dataflow, with a timer per phase. Generators keep `generation.in_flight` requests queued, finished
rollouts go to the reward pool, scored rollouts wait in a bounded buffer, and the learner trains on a
batch as soon as it is idle and a batch is ready. Every `ppo.sync_every` learner steps the learner
publishes a snapshot that each generator applies before its next generate call. When the rollouts in
the system reach `ppo.buffer_size`, no new generation starts (backpressure), which bounds both
memory and staleness.

`mode: sync` runs the same components strictly in sequence (generate -> score -> train -> publish ->
apply); it is the baseline of every throughput claim.

Every remote wait has a timeout; a failure in any actor surfaces here with the actor's name and cause.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import ray

from raylhf.contracts.formatting import encode_prompt
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Prompt, Rollout

log = logging.getLogger(__name__)


class ActorFailure(RuntimeError):
    """An actor of the pipeline failed; the message names it and the cause."""


class PromptCursor:
    """Cycles through the prompts in a fresh seeded order each epoch; its state is two integers."""

    def __init__(self, prompts: Sequence[Prompt], seed: int):
        if not prompts:
            raise ValueError("no prompts to train on")
        self.prompts, self.seed = list(prompts), seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))

    def take(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.prompts[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


class PhaseTimer:
    """Wall seconds spent in each labelled phase of the loop."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def __call__(self, phase: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[phase] += time.perf_counter() - self.t0

        return _Span()


@dataclass
class DriverSettings:
    total_steps: int  # learner steps
    rollouts_per_step: int  # rollouts in one learner batch
    prompts_per_request: int  # prompts in one generate call
    in_flight: int  # generate calls queued per generator (async)
    sync_every: int  # learner steps between published snapshots
    buffer_size: int  # most rollouts in the system (generating + scoring + buffered) before backpressure
    timeout_s: float  # longest wait for any single remote call
    mode: str = "async"


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


def _get(ref, what: str, who: str, timeout_s: float):
    """ray.get with a deadline; failures name the actor."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        raise ActorFailure(f"{who}: {what} did not finish within {timeout_s:.0f} s") from e
    except ray.exceptions.RayError as e:
        raise ActorFailure(f"{who}: {what} failed: {_cause(e)}") from e


def _cause(e: Exception) -> str:
    """The original exception of a remote failure in one line (the full trace stays chained)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(e).strip().splitlines()
    return f"{type(e).__name__}: {first[0] if first else ''}"


class PPODriver:
    """Owns the actors' handles, the prompt cursor and the loop. Components are built by the caller."""

    def __init__(self, *, generators: Sequence[Any], generator_names: Sequence[str], pool, learner, tokenizer,
                 cursor: PromptCursor, sampling: SamplingSpec, settings: DriverSettings,
                 on_step: Callable[[int, dict[str, Any]], None] = lambda step, metrics: None,
                 on_rollouts: Callable[[list[Rollout]], None] = lambda rollouts: None,
                 start_step: int = 0, start_version: int = 0):
        self.generators, self.names = list(generators), list(generator_names)
        self.pool, self.learner, self.tokenizer = pool, learner, tokenizer
        self.cursor, self.sampling, self.s = cursor, sampling, settings
        self.on_step, self.on_rollouts = on_step, on_rollouts
        self.timer = PhaseTimer()
        self.stats = RunStats()
        self.stats.steps = start_step  # > 0 when resuming: the loop runs on to settings.total_steps
        self.version = start_version
        self.snapshot_ref = None  # newest published snapshot (kept for the final weight check)
        self._weight_refs: list[tuple[Any, str]] = []  # pending load_weights calls

    # -- shared steps ---------------------------------------------------------------------------------
    def _requests(self) -> list[GenerationRequest]:
        prompts = self.cursor.take(self.s.prompts_per_request)
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

    def _train(self, batch: list[Rollout]) -> dict[str, Any]:
        return _get(self.learner.train_step.remote(batch), "train_step", "learner", self.s.timeout_s)

    def _after_step(self, batch: list[Rollout], metrics: dict[str, Any], learner_s: float) -> None:
        self.stats.steps += 1
        self.stats.learner_busy_s += learner_s
        self.stats.rollouts += len(batch)
        self.stats.response_tokens += sum(len(r.response_ids) for r in batch)
        for r in batch:
            self.stats.staleness[self.version - r.policy_version] += 1
        self.on_rollouts(batch)
        metrics = dict(metrics, version=self.version, wall_s=time.perf_counter() - self._t0)
        self.stats.metrics.append(metrics)
        self.on_step(self.stats.steps, metrics)
        if self.stats.steps % self.s.sync_every == 0:
            with self.timer("publish"):
                self._publish()

    def _publish(self) -> None:
        from raylhf.actors.generator import broadcast_weights

        self._check_weight_loads(block=False)
        version, snapshot_ref = _get(self.learner.publish.remote(), "publish", "learner", self.s.timeout_s)
        self.version, self.snapshot_ref = version, snapshot_ref
        refs = broadcast_weights(self.generators, snapshot_ref)
        self._weight_refs.extend(zip(refs, self.names))

    def _check_weight_loads(self, block: bool) -> None:
        """Surface failed weight loads; with block=True wait until every generator applied the newest."""
        if not self._weight_refs:
            return
        refs = [r for r, _ in self._weight_refs]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=self.s.timeout_s if block else 0)
        finished = set(done)
        remaining = []
        for ref, name in self._weight_refs:
            if ref in finished:
                _get(ref, "load_weights", name, self.s.timeout_s)
            else:
                remaining.append((ref, name))
        if block and remaining:
            raise ActorFailure(f"{remaining[0][1]}: load_weights did not finish within {self.s.timeout_s:.0f} s")
        self._weight_refs = remaining

    def run(self) -> RunStats:
        self._t0 = time.perf_counter()
        if self.version > 0:
            # Resumed learner: the generators start from the initial policy, so hand them its weights first
            # (and a version they share with the learner, or every rollout would look stale).
            with self.timer("publish"):
                self._publish()
        try:
            (self._run_sync if self.s.mode == "sync" else self._run_async)()
        finally:
            self.stats.wall_s = time.perf_counter() - self._t0
            self.stats.phases = dict(self.timer.seconds)
            self.stats.final_version = self.version
        if self.stats.steps % self.s.sync_every:
            self._publish()  # the generators end on the final weights
        self._check_weight_loads(block=True)
        return self.stats

    def generators_match_learner(self) -> bool:
        """Whether every generator computes with exactly the newest published weights (read back)."""
        from raylhf.actors.generator import wait_all
        from raylhf.contracts.snapshot import snapshot_checksums

        if self.snapshot_ref is None:
            return True
        expected = snapshot_checksums(_get(self.snapshot_ref, "snapshot", "learner", self.s.timeout_s))
        got = wait_all([g.checksums.remote() for g in self.generators], self.names, self.s.timeout_s, "checksums")
        return all({k: g.get(k) for k in expected} == expected for g in got)

    # -- sync: the baseline ---------------------------------------------------------------------------
    def _run_sync(self) -> None:
        per_call = max(1, self.s.rollouts_per_step // (self.sampling.n * len(self.generators) * self.s.prompts_per_request))
        while self.stats.steps < self.s.total_steps:
            with self.timer("generate"):
                t0 = time.perf_counter()
                refs = [(g.generate.remote(self._requests(), self.sampling), name)
                        for g, name in zip(self.generators, self.names) for _ in range(per_call)]
                rollouts = []
                for ref, name in refs:
                    rollouts.extend(self._unpack(_get(ref, "generate", name, self.s.timeout_s)))
                self.stats.generator_busy_s += (time.perf_counter() - t0) * len(self.generators)
            with self.timer("score"):
                scored = self.pool.score(rollouts)
            with self.timer("train"):
                t0 = time.perf_counter()
                metrics = self._train(scored)
                learner_s = time.perf_counter() - t0
            self._after_step(scored, metrics, learner_s)
            with self.timer("apply_weights"):
                self._check_weight_loads(block=True)

    # -- async: the actor/learner pipeline ------------------------------------------------------------
    def _run_async(self) -> None:
        s = self.s
        generating: dict[Any, tuple[int, float]] = {}  # generate ref -> (generator index, submit time)
        queued = [0] * len(self.generators)
        busy_until = [0.0] * len(self.generators)  # for busy-time accounting of back-to-back calls
        to_score: collections.deque[list[Rollout]] = collections.deque()
        buffer: collections.deque[Rollout] = collections.deque()
        scoring = 0  # rollouts inside the reward pool
        train_ref, train_batch, train_t0 = None, None, 0.0
        rollouts_per_call = s.prompts_per_request * self.sampling.n

        while self.stats.steps < s.total_steps:
            with self.timer("dispatch_generate"):
                in_system = rollouts_per_call * len(generating) + sum(map(len, to_score)) + scoring + len(buffer)
                for i, g in enumerate(self.generators):
                    while queued[i] < s.in_flight and in_system + rollouts_per_call <= s.buffer_size:
                        generating[g.generate.remote(self._requests(), self.sampling)] = (i, time.perf_counter())
                        queued[i] += 1
                        in_system += rollouts_per_call

            with self.timer("wait"):
                watch = list(generating) + ([train_ref] if train_ref is not None else [])
                done, _ = ray.wait(watch, num_returns=1, timeout=0.02) if watch else ([], [])
                done = set(done)

            with self.timer("collect_generate"):
                for ref in [r for r in generating if r in done]:
                    i, submitted = generating.pop(ref)
                    queued[i] -= 1
                    now = time.perf_counter()
                    self.stats.generator_busy_s += now - max(submitted, busy_until[i])
                    busy_until[i] = now
                    to_score.append(self._unpack(_get(ref, "generate", self.names[i], s.timeout_s)))

            with self.timer("score"):
                while to_score and self.pool.has_capacity():
                    batch = to_score.popleft()
                    self.pool.submit(batch, block=False)
                    scoring += len(batch)
                for _, scored in self.pool.ready(timeout=0.0):
                    scoring -= len(scored)
                    buffer.extend(scored)

            with self.timer("train"):
                if train_ref is not None and train_ref in done:
                    metrics = _get(train_ref, "train_step", "learner", s.timeout_s)
                    self._after_step(train_batch, metrics, time.perf_counter() - train_t0)
                    train_ref = None
                if train_ref is None and len(buffer) >= s.rollouts_per_step and self.stats.steps < s.total_steps:
                    train_batch = [buffer.popleft() for _ in range(s.rollouts_per_step)]
                    train_ref, train_t0 = self.learner.train_step.remote(train_batch), time.perf_counter()

            with self.timer("check_weights"):
                self._check_weight_loads(block=False)

        # Drain: let queued generate calls finish so the actors are idle and consistent.
        for ref, (i, _) in list(generating.items()):
            _get(ref, "generate", self.names[i], s.timeout_s)

"""The PPO driver: prompts -> generators -> reward pool -> bounded buffer -> learner -> weights back.

`PPODriver.run` holds the one top-level loop. In `ppo.mode: async` each pass through it moves work one
hop along the dataflow, a timer per phase::

    dispatch_generate -> wait -> collect_generate -> score -> train -> deadlines

Generators keep `generation.in_flight` requests queued, finished rollouts go to the reward pool, scored
rollouts wait in a bounded buffer, and the learner trains on a batch as soon as it is idle and a batch
is ready. Every `ppo.sync_every` learner steps the learner publishes a snapshot that each generator
applies before its next generate call (with `generation.weight_updates: in_flight`, inside its running
call, between two decoding steps). When the rollouts in the system reach `ppo.buffer_size`, no new
generation starts (backpressure), which bounds both memory and staleness. `InFlight` holds what is in
flight between the hops; `SampleLedger` where every rollout went. After a learner step the loop runs, each in
its own timed phase (so every second is counted once): `observe` (progress, metrics, in-training evaluation),
`publish` (every `ppo.sync_every` steps) and `checkpoint` (every `ppo.checkpoint_every`).

`mode: sync` runs the same components strictly in sequence (generate -> score -> train -> publish ->
apply); it is the baseline of every throughput claim.

Healing. Every actor is a `raylhf.contracts.supervision.Supervised` slot (the `supervision` config): every
remote call has a deadline, and an actor that dies, fails or hangs is replaced. Generators resubmit their
prompts (`GeneratorSet`); the reward pool resubmits its requests. A lost learner is replaced and restored from
the newest checkpoint (`ppo.checkpoint_every`; one is written before the first step): weights, optimisers,
prompt cursor with the prompts that were in flight, the ledger and the reward normaliser — the steps since that
checkpoint are redone, and the metrics rows logged for them are dropped (`StepObserver.on_rewind`).
`supervision.max_consecutive_restarts` bounds the replacements of one actor without progress; past it the
failure ends the run, naming the actor and its cause. Faults of every kind go to one `FaultLog`.

What the loop measures and reports is in `raylhf.orchestration.run_stats`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from raylhf.configs.schema import PPOConfig, SupervisionConfig
from raylhf.contracts import remote
from raylhf.contracts.protocols import GenerationRequest, GeneratorService, LearnerService, SamplingSpec, ScoringPool
from raylhf.contracts.records import Rollout
from raylhf.contracts.remote import ActorFailure, NamedActor
from raylhf.contracts.snapshot import snapshot_checksums
from raylhf.contracts.supervision import ACTOR_KINDS, FaultLog, Supervised, restarts_key
from raylhf.contracts.timing import PhaseTimer
from raylhf.orchestration.cursor import Draw, PromptCursor, epoch_seed
from raylhf.orchestration.generator_set import ActorFactory, Generated, GeneratorSet
from raylhf.orchestration.ledger import SampleLedger
from raylhf.orchestration.ppo_checkpoint import PPOCheckpoint
from raylhf.orchestration.run_stats import LoopState, RunStats, SilentObserver, StepObserver

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """What is in flight between the hops of the async loop (generate calls live in `GeneratorSet`)."""

    to_score: collections.deque[list[Rollout]] = field(default_factory=collections.deque)  # generated, not sent
    scoring: dict[int, list[Rollout]] = field(default_factory=dict)  # pool request id -> rollouts sent
    buffer: collections.deque[Rollout] = field(default_factory=collections.deque)  # scored, waiting to train
    train_ref: Any = None  # the learner's running train_step
    train_batch: list[Rollout] = field(default_factory=list)

    def clear(self) -> None:
        self.to_score.clear()
        self.scoring.clear()  # answers of these requests are ignored when they come
        self.buffer.clear()
        self.train_ref, self.train_batch = None, []


class _LearnerLost(Exception):
    def __init__(self, failure: ActorFailure):
        super().__init__(str(failure))
        self.failure = failure


class PPODriver:
    """Owns the supervised actors, the prompt cursor, the ledger and the loop; the caller builds the components.

    Args:
        cfg: the `ppo` section (steps, batch and request sizes, buffer, sync and checkpoint cadence, mode).
        supervision: the `supervision` section (deadlines, restart cap, back-off of the generators and learner).
        generators: generator actors serving `GeneratorService`.
        learner: the learner actor serving `LearnerService`.
        pool: the scoring pool (it supervises its own scorers, into the same `faults`).
        prompt_format: renders prompts to token ids (`contracts.formatting.PromptFormat`).
        cursor: where the prompts come from.
        sampling: how generators sample (its seed is varied per epoch of the cursor).
        in_flight: generate calls each generator keeps queued (`generation.in_flight`).
        observer: told about every learner step.
        checkpoint: where the run's checkpoints go; None: no checkpoints, and a lost learner ends the run.
        factory: starts replacements of lost actors; None: any actor failure ends the run.
        faults: the stage's fault log (shared with the pool); a new one by default.
        resume: restore learner, cursor, ledger and reward normaliser from `checkpoint` first.
        weight_updates: `generation.weight_updates`; `in_flight` sends weight loads to the generators'
            weights concurrency group, to be applied inside their running generate calls.
    """

    def __init__(self, cfg: PPOConfig, supervision: SupervisionConfig, *,
                 generators: Sequence[NamedActor[GeneratorService]], learner: NamedActor[LearnerService],
                 pool: ScoringPool, prompt_format: Any, cursor: PromptCursor, sampling: SamplingSpec, in_flight: int,
                 observer: StepObserver | None = None, checkpoint: PPOCheckpoint | None = None,
                 factory: ActorFactory | None = None, faults: FaultLog | None = None, resume: bool = False,
                 weight_updates: str = "between_calls"):
        self.cfg, self.pool = cfg, pool
        self.faults = faults or FaultLog()
        self.gens = GeneratorSet(supervision.policy("generator"), generators, factory, self.faults,
                                 in_flight_weights=weight_updates == "in_flight")
        self.heals_learner = factory is not None and checkpoint is not None
        self.learner = Supervised("learner", factory.spawn_learner if factory else None,
                                  supervision.policy("learner"), self.faults, actor=learner,
                                  progress=frozenset({"train_step"}))
        self.prompt_format, self.cursor, self.sampling, self.in_flight = prompt_format, cursor, sampling, in_flight
        self.observer = observer or SilentObserver()
        self.checkpoint, self.resume = checkpoint, resume
        self.ledger = SampleLedger(sampling.n)
        self.timer = PhaseTimer()
        self.stats = RunStats()
        self.version = 0  # the learner's newest published version
        self.snapshot_ref = None  # its snapshot (kept for replacements and the final weight check)
        self._work: InFlight | None = None
        self._t0 = time.perf_counter()

    @property
    def generators(self) -> list[NamedActor[GeneratorService]]:
        return self.gens.actors

    def generate(self, requests: list[GenerationRequest], sampling: SamplingSpec) -> list[list[Rollout] | None]:
        """Generate on the first generator, supervised like the loop's own calls (the in-training evaluation)."""
        return self.gens.generate_now(0, requests, sampling)

    def run(self) -> RunStats:
        self._t0 = time.perf_counter()
        self._scorer_busy0 = self._pool_busy_s()  # the pool may have scored before this loop
        try:
            if self.resume:
                with self.timer("restore"):
                    try:
                        self._restore()
                    except _LearnerLost as e:
                        raise e.failure from e
            self._start_state = self._driver_state()  # what a learner lost before the first checkpoint restarts from
            while True:
                try:
                    if self.checkpoint is not None and self.checkpoint.latest() is None:
                        self._save_checkpoint()  # step 0: a lost learner restarts here
                    (self._run_sync if self.cfg.mode == "sync" else self._run_async)()
                    if self.stats.steps % self.cfg.sync_every:
                        self._publish()  # the generators end on the final weights
                    if self.checkpoint is not None:
                        self._save_checkpoint()
                    break
                except _LearnerLost as e:
                    self._heal_learner(e.failure)
            with self.timer("apply_weights"):
                self.gens.wait_until(self.gens.weights_current)
        finally:
            self.stats.wall_s = time.perf_counter() - self._t0
            self.stats.phases = dict(self.timer.seconds)
            self.stats.scorer_busy_s = self._pool_busy_s() - self._scorer_busy0
            self.stats.final_version = self.version
            self.stats.faults = sorted(self.faults.faults, key=lambda f: f.at_s)
            self.stats.accounting = self._accounting()
        return self.stats

    # -- sync: the baseline ---------------------------------------------------------------------------
    def _run_sync(self) -> None:
        calls = max(1, self.cfg.batch_size // (self.sampling.n * len(self.gens.slots) * self.cfg.prompts_per_request))
        while self.stats.steps < self.cfg.total_steps:
            with self.timer("generate"):
                t0 = time.perf_counter()
                order: dict[tuple[str, int], int] = {}
                for i in range(len(self.gens.slots)):
                    for _ in range(calls):
                        draws = self._take()
                        order.update((d.key, len(order)) for d in draws)
                        self.gens.submit(i, draws, self._requests(draws), self.sampling)
                answered: list[Generated] = []
                self.gens.wait_until(lambda: self.gens.generating() == 0, answered.append)
                answered.sort(key=lambda g: order[g.draws[0].key])  # the order they were asked in
                rollouts = [r for g in answered for r in self._absorb(g)]
                self.stats.generator_busy_s += (time.perf_counter() - t0) * len(self.gens.slots)
            with self.timer("score"):
                scored = self.pool.score(rollouts)
                self.ledger.rejected_among(rollouts, scored)
            with self.timer("train"):
                t0 = time.perf_counter()
                metrics = self._learner_call("train_step", scored)
                metrics = self._record_step(scored, metrics, time.perf_counter() - t0)
            self._after_step(scored, metrics)
            with self.timer("apply_weights"):
                self.gens.wait_until(self.gens.weights_current)

    # -- async: the actor/learner pipeline ------------------------------------------------------------
    def _run_async(self) -> None:
        work = self._work = InFlight()
        while self.stats.steps < self.cfg.total_steps:
            with self.timer("dispatch_generate"):
                self._dispatch_generate()
            with self.timer("wait"):
                done = self._wait(work)
            with self.timer("collect_generate"):
                for generated in self.gens.collect(done):
                    self.stats.generator_busy_s += generated.busy_s
                    rollouts = self._absorb(generated)
                    if rollouts:
                        work.to_score.append(rollouts)
            with self.timer("score"):
                self._score(work)
            with self.timer("train"):
                stepped = self._train(work, done)
            if stepped is not None:
                self._after_step(*stepped)
            with self.timer("deadlines"):
                self.gens.check_deadlines()
                late = self.learner.overdue()
                if late is not None:
                    raise _LearnerLost(self.learner.deadline_failure(late))
        # Let queued generate calls finish so the actors are idle and consistent.
        self.gens.wait_until(lambda: self.gens.generating() == 0, self._absorb)

    def _dispatch_generate(self) -> None:
        """Top up every generator's queue, unless the system already holds `buffer_size` rollouts."""
        per_call = self.cfg.prompts_per_request * self.sampling.n
        in_system = self.ledger.in_system - self.cursor.pending_reissues * self.sampling.n
        for i in range(len(self.gens.slots)):
            while self.gens.queued(i) < self.in_flight and in_system + per_call <= self.cfg.buffer_size:
                draws = self._take()
                self.gens.submit(i, draws, self._requests(draws), self.sampling)
                in_system += per_call

    def _wait(self, work: InFlight) -> set:
        """Wait briefly for a generator or the train step to answer (the pool is polled separately)."""
        return set(remote.wait(self.gens.refs() + list(self.learner.calls), 0.02))

    def _score(self, work: InFlight) -> None:
        while work.to_score and self.pool.has_capacity():
            batch = work.to_score.popleft()
            work.scoring[self.pool.submit(batch, block=False)] = batch
        for request_id, scored in self.pool.ready(timeout=0.0):
            sent = work.scoring.pop(request_id, None)
            if sent is None:  # sent before the learner was rewound
                continue
            self.ledger.rejected_among(sent, scored)
            work.buffer.extend(scored)

    def _train(self, work: InFlight, done: set) -> tuple[list[Rollout], dict[str, Any]] | None:
        """Finish the learner's step if it is done (returns its batch and metrics row); start the next one as
        soon as a batch is buffered."""
        stepped = None
        if work.train_ref is not None and work.train_ref in done:
            try:
                _, metrics, learner_s = self.learner.finish(work.train_ref)
            except ActorFailure as e:
                raise _LearnerLost(e) from e
            batch = work.train_batch
            work.train_ref, work.train_batch = None, []
            stepped = batch, self._record_step(batch, metrics, learner_s)
        if work.train_ref is None and len(work.buffer) >= self.cfg.batch_size and self.stats.steps < self.cfg.total_steps:
            work.train_batch = [work.buffer.popleft() for _ in range(self.cfg.batch_size)]
            work.train_ref = self.learner.submit("train_step", work.train_batch).ref
        return stepped

    # -- steps shared by both modes -------------------------------------------------------------------
    def _take(self) -> list[Draw]:
        draws = self.cursor.take(self.cfg.prompts_per_request)
        self.ledger.taken(draws)
        return draws

    def _requests(self, draws: list[Draw]) -> list[GenerationRequest]:
        """Each epoch of the cursor samples with its own seed: a prompt seen again gets fresh noise."""
        out = []
        for d in draws:
            sampling = None
            if d.epoch > 0 and self.sampling.seed is not None:
                sampling = dataclasses.replace(self.sampling, seed=epoch_seed(self.sampling.seed, d.epoch))
            out.append(GenerationRequest(d.prompt.prompt_id, tuple(self.prompt_format.prompt_ids(d.prompt)),
                                         sampling))
        return out

    def _absorb(self, generated: Generated) -> list[Rollout]:
        rollouts = []
        for draw, result in zip(generated.draws, generated.results):
            self.ledger.generated(draw, result)
            rollouts.extend(result or [])
        return rollouts

    def _learner_call(self, method: str, *args: Any) -> Any:
        try:
            return self.learner.call(method, *args, timeout_s=self.learner.policy.call_timeout_s)
        except ActorFailure as e:
            raise _LearnerLost(e) from e

    def _record_step(self, batch: list[Rollout], metrics: dict[str, Any], learner_s: float) -> dict[str, Any]:
        """Account for a finished learner step; returns its metrics row."""
        for r in batch:  # the learner drops stale rollouts by this same rule
            self.ledger.resolve([r], "dropped_stale" if self.version - r.policy_version > self.cfg.max_staleness
                                else "trained")
        self.stats.steps += 1
        self.stats.learner_busy_s += learner_s
        self.stats.rollouts += len(batch)
        self.stats.response_tokens += sum(len(r.response_ids) for r in batch)
        for r in batch:
            self.stats.staleness[self.version - r.policy_version] += 1
        self.stats.rollouts_in_flight_updated += sum(r.spans_versions() for r in batch)
        self.stats.scorer_busy_s = self._pool_busy_s() - self._scorer_busy0
        # Cumulative like `wall_s`, so a window's busy fraction is its busy growth / wall growth / actors.
        metrics = dict(metrics, step=self.stats.steps, version=self.version,
                       wall_s=time.perf_counter() - self._t0, generator_busy_s=self.stats.generator_busy_s,
                       scorer_busy_s=self.stats.scorer_busy_s, learner_busy_s=self.stats.learner_busy_s,
                       rollouts_in_flight_updated=self.stats.rollouts_in_flight_updated,
                       **self._fault_counts())
        self.stats.metrics.append(metrics)
        return metrics

    def _after_step(self, batch: list[Rollout], metrics: dict[str, Any]) -> None:
        """What follows a learner step, each in its own phase: report it, publish, checkpoint."""
        with self.timer("observe"):
            self.observer.on_rollouts(batch)
            self.observer.on_step(self.stats.steps, metrics)
        if self.stats.steps % self.cfg.sync_every == 0:
            with self.timer("publish"):
                self._publish()
        every = self.cfg.checkpoint_every
        if self.checkpoint is not None and every and self.stats.steps % every == 0 and self.stats.steps < self.cfg.total_steps:
            with self.timer("checkpoint"):
                self._save_checkpoint()

    def _publish(self, advance: bool = True) -> None:
        self.version, self.snapshot_ref = self._learner_call("publish", advance)
        self.gens.publish(self.version, self.snapshot_ref)

    # -- checkpoints and the learner's healing --------------------------------------------------------
    def _driver_state(self) -> dict[str, Any]:
        return {"cursor": self.cursor.state_dict(outstanding=self.ledger.open_draws()),
                "ledger": self.ledger.state_dict(), "pool": self.pool.state_dict()}

    def _save_checkpoint(self) -> None:
        state = self._driver_state()
        try:
            self.checkpoint.save(self.learner.actor, self.stats.steps, state, self.learner.policy.call_timeout_s)
        except ActorFailure as e:
            raise _LearnerLost(e) from e

    def _restore(self) -> int:
        """Load the newest checkpoint into the learner and the driver; returns its step."""
        try:
            if self.checkpoint.latest() is None:  # lost before the first checkpoint was complete: a fresh start
                step, version, state = 0, 0, self._start_state
            else:
                step, version, state = self.checkpoint.restore(self.learner.actor, self.learner.policy.call_timeout_s)
        except ActorFailure as e:
            raise _LearnerLost(e) from e
        self.cursor.load_state_dict(state["cursor"])
        self.ledger.load_state_dict(state["ledger"], self.cursor.reissues())
        self.pool.load_state_dict(state["pool"])
        if self._work is not None:
            self._work.clear()
        self.gens.discard_generations()
        self.stats.steps = step
        self.stats.metrics = [m for m in self.stats.metrics if m["step"] <= step]
        self.observer.on_rewind(step)
        self.version = version
        if version > 0:  # the generators may hold other weights: give them the restored ones
            self._publish(advance=False)
        return step

    def _heal_learner(self, failure: ActorFailure) -> None:
        if not self.heals_learner:
            raise failure
        log.warning("%s lost (%s); replacing it from the newest checkpoint", self.learner.name, failure)
        fault, _ = self.learner.replace(failure, wait_ready=True)  # its calls are redone from the checkpoint
        before = self.stats.steps
        with self.timer("restore"):
            step = self._restore()
        fault.lost_steps = before - step

    def _pool_busy_s(self) -> float:
        """Seconds the reward pool's actors have had work, summed (0 for a pool that does not measure it)."""
        return self.pool.stats().busy_s

    def _fault_counts(self) -> dict[str, int]:
        counts = self.faults.counts()
        return {**self.ledger.summary(), "samples_resubmitted": self.faults.resubmitted("generator"),
                **{restarts_key(kind): counts[restarts_key(kind)] for kind in ACTOR_KINDS}}

    def _accounting(self) -> dict[str, Any]:
        return {**self._fault_counts(), "samples_in_system": self.ledger.in_system,
                "accounting_balanced": self.ledger.balance()["ok"]}

    def loop_state(self) -> LoopState:
        """What the loop measured so far and holds in flight; called by observers, or after `run`."""
        stats = dataclasses.replace(self.stats, staleness=collections.Counter(self.stats.staleness), metrics=[])
        if not stats.wall_s:  # still running (`run` fills these in when it ends)
            stats.wall_s, stats.phases = time.perf_counter() - self._t0, dict(self.timer.seconds)
            stats.scorer_busy_s = self._pool_busy_s() - self._scorer_busy0
        work = self._work or InFlight()  # sync mode holds nothing between hops
        depths = {"to_score": sum(map(len, work.to_score)), "scoring": sum(map(len, work.scoring.values())),
                  "buffered": len(work.buffer), "training": len(work.train_batch)}
        names = [g.name for g in self.gens.actors]
        return LoopState(stats, self.ledger.in_system, depths,
                         {n: self.gens.queued(i) for i, n in enumerate(names)},
                         dict(zip(names, self.gens.versions)), self.snapshot_ref)

    def generators_match_learner(self) -> bool:
        """Whether every generator computes with exactly the newest published weights (read back)."""
        if self.snapshot_ref is None:
            return True
        expected = snapshot_checksums(remote.get(self.snapshot_ref, actor=self.learner.name, what="snapshot",
                                                 timeout_s=self.learner.policy.call_timeout_s))
        return all({k: g.get(k) for k in expected} == expected for g in self.gens.checksums())

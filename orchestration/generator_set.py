"""`GeneratorSet`: the PPO stage's generator actors, each kept alive and on the newest published weights.

A generator actor runs its calls one at a time in submission order, so each slot keeps its calls in that
order and puts a deadline on the one at the head of the queue (`ppo.timeout_s`, plus
`ppo.actor_startup_timeout_s` while a new actor is still loading its engine). A slot whose actor dies,
raises, or misses that deadline is replaced (`ActorRespawner.respawn_generator`): the new actor first
applies the newest published weights, then receives the prompts the old one held, in order, once. The old
actor is killed, so a late answer from it can never arrive. After `ppo.max_consecutive_restarts`
replacements of one slot without an answer in between, the failure stops the run, naming the actor.

Weight loads are coalesced: a slot has at most one `load_weights` call outstanding, and when it finishes
behind the newest version the newest is sent next. So a slow or stuck generator pins at most one snapshot
in the object store, however many versions the learner publishes meanwhile.

With in-flight weight updates (`generation.weight_updates: in_flight`) a load is sent to the actor's
`weights` concurrency group and runs beside its generate call (applied between two decoding steps), so it is
not part of the slot's ordered queue: it has its own deadline, `ppo.timeout_s` from its submission, and its
answer does not count as the end of the queue's head call. A replacement actor's first load still goes
through the ordered queue, so its first generate call already computes with the newest weights.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from raylhf.configs.schema import PPOConfig
from raylhf.contracts import remote
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout
from raylhf.contracts.remote import ActorFailure, NamedActor
from raylhf.orchestration.cursor import Draw

log = logging.getLogger(__name__)


class ActorRespawner(Protocol):
    """Replaces a lost actor with a fresh one (`raylhf.orchestration.actor_set.PPOActors` implements it)."""

    def respawn_generator(self, index: int) -> NamedActor:
        """Kill generator `index` and create its replacement (started from the initial policy; not waited for)."""
        ...

    def respawn_learner(self) -> NamedActor:
        """Kill the learner and start a fresh one from the initial checkpoints; returns once it is ready."""
        ...


@dataclass
class Fault:
    """One healed failure, for the run's summary."""

    actor: str
    kind: str  # "died" | "timeout" | "error"
    cause: str
    at_s: float  # seconds since the loop started
    heal_s: float = 0.0  # time spent replacing the actor
    lost_steps: int = 0  # learner steps redone (learner faults only)
    resubmitted: int = 0  # prompts handed to the replacement (generator faults only)


@dataclass
class _Call:
    kind: str  # "ready" | "load_weights" | "generate"
    ref: Any
    submitted: float
    draws: list[Draw] = field(default_factory=list)
    requests: list[GenerationRequest] = field(default_factory=list)
    sampling: SamplingSpec | None = None
    version: int = 0
    discard: bool = False  # answer no longer wanted (the learner was rewound)
    concurrent: bool = False  # runs beside the ordered calls (an in-flight weight load)


@dataclass
class Generated:
    """One answered generate call: its draws and, per draw, the rollouts or None when refused."""

    draws: list[Draw]
    results: list[list[Rollout] | None]
    busy_s: float


class _Slot:
    def __init__(self, index: int, actor: NamedActor, now: float):
        self.index, self.actor = index, actor
        self.calls: collections.OrderedDict[Any, _Call] = collections.OrderedDict()
        self.last_done = now
        self.fresh = False  # a new actor that has not answered yet
        self.restarts = 0
        self.failures_in_a_row = 0
        self.version = 0  # weights the actor holds once its queued loads ran
        self.info: dict[str, Any] = {}

    def generate_calls(self) -> int:
        return sum(c.kind == "generate" for c in self.calls.values())

    def loading(self) -> bool:
        return any(c.kind == "load_weights" for c in self.calls.values())

    def overdue(self, now: float, allowance: float) -> _Call | None:
        """The call waiting past `allowance`: the head of the ordered queue (counted from when the call before
        it answered), or a concurrent load (counted from its submission)."""
        ordered = [c for c in self.calls.values() if not c.concurrent]
        if ordered and now - max(ordered[0].submitted, self.last_done) > allowance:
            return ordered[0]
        return next((c for c in self.calls.values() if c.concurrent and now - c.submitted > allowance), None)


class GeneratorSet:
    """Generator slots with ordered calls, deadlines, replacement and coalesced weight loads."""

    def __init__(self, cfg: PPOConfig, generators: Sequence[NamedActor], respawn: ActorRespawner | None = None,
                 clock: Callable[[], float] = time.monotonic, in_flight_weights: bool = False):
        self.cfg, self.respawn, self.clock = cfg, respawn, clock
        self.in_flight_weights = in_flight_weights  # generators started with weight_updates: in_flight
        now = clock()
        self.slots = [_Slot(i, g, now) for i, g in enumerate(generators)]
        self._slot_of: dict[Any, _Slot] = {}
        self.newest: tuple[int, Any] | None = None  # (version, snapshot ref) last published
        self.faults: list[Fault] = []
        self.t0 = now

    # -- views ----------------------------------------------------------------------------------------
    @property
    def actors(self) -> list[NamedActor]:
        return [s.actor for s in self.slots]

    def refs(self) -> list[Any]:
        return list(self._slot_of)

    def queued(self, i: int) -> int:
        return self.slots[i].generate_calls()

    def generating(self) -> int:
        return sum(s.generate_calls() for s in self.slots)

    def weights_current(self) -> bool:
        """Every generator holds the newest published version, with no load outstanding."""
        v = 0 if self.newest is None else self.newest[0]
        return all(s.version == v and not s.loading() for s in self.slots)

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    # -- calls ----------------------------------------------------------------------------------------
    def _call(self, slot: _Slot, call: _Call) -> None:
        slot.calls[call.ref] = call
        self._slot_of[call.ref] = slot

    def submit(self, i: int, draws: list[Draw], requests: list[GenerationRequest], sampling: SamplingSpec) -> None:
        slot = self.slots[i]
        ref = slot.actor.handle.generate.remote(requests, sampling)
        self._call(slot, _Call("generate", ref, self.clock(), draws, requests, sampling))

    def _load(self, slot: _Slot) -> None:
        from raylhf.actors.generator import load_weights_call

        version, snapshot_ref = self.newest
        concurrent = self.in_flight_weights and not slot.fresh
        ref = load_weights_call(slot.actor.handle, snapshot_ref, concurrent)
        self._call(slot, _Call("load_weights", ref, self.clock(), version=version, concurrent=concurrent))

    def publish(self, version: int, snapshot_ref: Any) -> None:
        """Send a new snapshot to every generator that is not already loading one (those get it next)."""
        self.newest = (version, snapshot_ref)
        for slot in self.slots:
            if not slot.loading():
                self._load(slot)

    def discard_generations(self) -> None:
        """Answers of the generate calls now in flight are no longer wanted (the learner was rewound)."""
        for slot in self.slots:
            for call in slot.calls.values():
                call.discard = call.discard or call.kind == "generate"

    # -- answers --------------------------------------------------------------------------------------
    def collect(self, done: set) -> list[Generated]:
        """Process finished calls among `done`; replace the actor of any that failed."""
        out: list[Generated] = []
        for slot in self.slots:
            for ref in [r for r in slot.calls if r in done]:
                if ref not in slot.calls:  # the slot was replaced while processing an earlier call
                    break
                call = slot.calls.pop(ref)
                self._slot_of.pop(ref, None)
                try:
                    value = remote.get(ref, actor=slot.actor.name, what=call.kind, timeout_s=self.cfg.timeout_s)
                except ActorFailure as e:
                    slot.calls[ref] = call  # resubmitted with the others by the replacement
                    slot.calls.move_to_end(ref, last=False)
                    self._replace(slot, e)
                    break
                now = self.clock()
                busy_s = now - max(call.submitted, slot.last_done)
                slot.fresh = False
                if not call.concurrent:  # the ordered queue moved on
                    slot.last_done = now
                if call.kind == "generate":
                    slot.failures_in_a_row = 0  # progress: an answered generate call
                if call.kind == "ready":
                    slot.info = value
                elif call.kind == "load_weights":
                    slot.version = call.version
                    if self.newest is not None and slot.version < self.newest[0] and not slot.loading():
                        self._load(slot)
                elif not call.discard:
                    results = [None if isinstance(r, RequestError) else r for r in value]
                    for r in value:
                        if isinstance(r, RequestError):
                            log.warning("prompt %s refused: %s", r.prompt_id, r.reason)
                    out.append(Generated(call.draws, results, busy_s))
        return out

    def check_deadlines(self) -> None:
        """Replace every generator whose oldest call has waited past its deadline."""
        now = self.clock()
        for slot in self.slots:
            if not slot.calls:
                continue
            allowance = self.cfg.timeout_s + (self.cfg.actor_startup_timeout_s if slot.fresh else 0.0)
            late = slot.overdue(now, allowance)
            if late is not None:
                self._replace(slot, ActorFailure(slot.actor.name, late.kind, f"no answer within {allowance:g} s",
                                                 "timeout"))

    def _replace(self, slot: _Slot, failure: ActorFailure) -> None:
        slot.failures_in_a_row += 1
        if self.respawn is None or slot.failures_in_a_row > self.cfg.max_consecutive_restarts:
            raise failure
        t0 = self.clock()
        pending = [c for c in slot.calls.values() if c.kind == "generate" and not c.discard]
        for ref in slot.calls:
            self._slot_of.pop(ref, None)
        slot.calls.clear()
        slot.actor = self.respawn.respawn_generator(slot.index)
        slot.restarts += 1
        slot.fresh, slot.last_done, slot.version, slot.info = True, self.clock(), 0, {}
        self._call(slot, _Call("ready", slot.actor.handle.ready.remote(), self.clock()))
        if self.newest is not None:
            self._load(slot)
        for call in pending:
            self.submit(slot.index, call.draws, call.requests, call.sampling)
        resubmitted = sum(len(c.draws) for c in pending)
        self.faults.append(Fault(slot.actor.name, failure.kind, failure.cause, t0 - self.t0, self.clock() - t0,
                                 resubmitted=resubmitted))
        log.warning("%s replaced (restart %d): %s; %d prompts resubmitted", slot.actor.name, slot.restarts,
                    failure, resubmitted)

    # -- blocking helpers (sync mode, the end of a run) -------------------------------------------------
    def wait_until(self, condition: Callable[[], bool], on_generated: Callable[[Generated], None] | None = None,
                   extra: Callable[[], None] | None = None) -> None:
        """Drive answers, deadlines and replacements until `condition()` holds."""
        import ray

        while not condition():
            refs = self.refs()
            done, _ = ray.wait(refs, num_returns=1, timeout=0.5) if refs else ([], [])
            for generated in self.collect(set(done)):
                if on_generated is not None:
                    on_generated(generated)
            self.check_deadlines()
            if extra is not None:
                extra()

    def checksums(self) -> list[dict[str, str]]:
        return remote.get_all([s.actor.handle.checksums.remote() for s in self.slots],
                              [s.actor.name for s in self.slots], "checksums", self.cfg.timeout_s)

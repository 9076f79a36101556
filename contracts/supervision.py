"""Supervision of the PPO stage's actors: one primitive for every kind (generators, scorers, the learner).

- `SupervisionPolicy`: the limits one kind of actor is supervised with, resolved from the `supervision` config.
- `Supervised`: one actor kept alive. Its calls are kept in the order they were submitted (an actor runs them
  one at a time in that order, so only the head of the queue is running); the deadline is on the head call,
  `call_timeout_s` counted from when the call before it answered, plus `startup_timeout_s` while a new actor
  has not answered yet. A call that runs beside the ordered ones (`concurrent`: an in-flight weight load in its
  own concurrency group) has its own deadline from its submission. On death, error or deadline the owner calls
  `replace(failure)`: the actor is killed (a late answer can never arrive), a replacement spawned (after a
  back-off when the previous replacement made no progress) and the calls the old actor held are handed back to
  be resubmitted (generators, scorers) or the state restored from a checkpoint (the learner). After
  `max_consecutive_restarts` replacements without progress, `replace` raises the failure: the run ends naming
  the actor and its cause.
- `Fault` / `FaultLog`: the one record of a healed failure and the one set of counters read off it, labelled
  by actor kind (`<kind>_restarts`, `<kind>_<died|timeout|error>`).
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Literal, TypeVar

from raylhf.contracts import remote
from raylhf.contracts.remote import ActorFailure, FailureKind, NamedActor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisionPolicy:
    """The limits one kind of actor is supervised with (`raylhf.configs.schema.SupervisionConfig.policy`)."""

    call_timeout_s: float  # a call at the head of an actor's queue unanswered this long: the actor is hung
    startup_timeout_s: float  # longest a new actor may load its models, on top of call_timeout_s for its first call
    max_consecutive_restarts: int  # replacements in a row without a successful call; one more failure ends the run
    backoff_s: float  # wait before retrying a replacement that failed without progress, doubled per further failure
    max_attempts: int  # dispatches of one unit of work before losing it again fails the run


ActorKind = Literal["generator", "scorer", "learner"]
ACTOR_KINDS: tuple[ActorKind, ...] = ("generator", "scorer", "learner")
H = TypeVar("H")


def restarts_key(kind: ActorKind) -> str:
    """The name of a kind's restart count in the stage's metrics, summary and Prometheus labels."""
    return f"{kind}_restarts"


@dataclass
class Fault:
    """One healed failure, for the run's summary and metrics (the one fault record of every actor kind)."""

    actor: str
    actor_kind: ActorKind
    kind: FailureKind  # "died" | "timeout" | "error"
    cause: str
    at_s: float  # seconds since the log started
    heal_s: float = 0.0  # time spent starting the replacement
    lost_steps: int = 0  # learner steps redone (learner faults)
    resubmitted: int = 0  # units of work handed to the replacement (prompts of a generator, requests of a scorer)
    at_start: bool = False  # the actor failed while starting (a replacement that did not come up)
    healed: bool = True  # False: past the restart cap, this failure ended the run


class FaultLog:
    """Every fault of a stage, in order, and the counters read off it (one set, labelled by actor kind)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock, self.t0 = clock, clock()
        self.faults: list[Fault] = []

    def record(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def restarts(self, kind: ActorKind) -> int:
        return sum(f.actor_kind == kind and f.healed for f in self.faults)

    def resubmitted(self, kind: ActorKind) -> int:
        return sum(f.resubmitted for f in self.faults if f.actor_kind == kind)

    def counts(self) -> dict[str, int]:
        """`<kind>_restarts` per actor kind and `<kind>_<died|timeout|error>` per kind of failure."""
        out = {restarts_key(kind): self.restarts(kind) for kind in ACTOR_KINDS}
        out.update({f"{kind}_{failure}": sum(f.actor_kind == kind and f.kind == failure for f in self.faults)
                    for kind in ACTOR_KINDS for failure in ("died", "timeout", "error")})
        out.update({f"{kind}_start_failures": sum(f.actor_kind == kind and f.at_start for f in self.faults)
                    for kind in ACTOR_KINDS})
        return out


@dataclass
class Call:
    """One remote call of a supervised actor; `payload` is what its owner needs to resubmit it."""

    method: str
    ref: Any
    submitted: float
    payload: Any = None
    attempts: int = 1  # dispatches so far, this one included
    concurrent: bool = False  # runs beside the ordered calls (its own concurrency group)
    discard: bool = False  # the answer is no longer wanted


class Supervised(Generic[H]):
    """One actor under supervision: ordered calls, a deadline on the oldest, replacement with back-off and a
    cap on consecutive restarts (see the module docstring).

    Args:
        kind: the actor kind (its fault records and the supervision keys that apply: `policy`).
        spawn: creates a new actor (not waited for) and returns it with its name.
        policy: deadlines, restart cap, back-off, attempts.
        faults: the stage's shared fault log.
        actor: the actor already started (else one is spawned).
        progress: calls whose answer counts as progress (resets the consecutive-restart count).
    """

    def __init__(self, kind: ActorKind, spawn: Callable[[], NamedActor[H]], policy: SupervisionPolicy,
                 faults: FaultLog, *, actor: NamedActor[H] | None = None, progress: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.kind, self.spawn, self.policy, self.faults = kind, spawn, policy, faults
        self.progress, self.clock, self.sleep = progress, clock, sleep
        self.actor: NamedActor[H] = actor if actor is not None else spawn()
        self.calls: collections.OrderedDict[Any, Call] = collections.OrderedDict()
        self.last_done = clock()
        self.fresh = actor is None  # a new actor that has not answered yet: its first call may also load it
        self.restarts = 0
        self.failures_in_a_row = 0
        self.busy_s = 0.0  # seconds with an ordered call running, over all restarts
        self.info: Any = None  # what a replacement's `ready()` answered (when `replace` waited for it)

    @property
    def name(self) -> str:
        return self.actor.name

    @property
    def handle(self) -> H:
        return self.actor.handle

    # -- calls ------------------------------------------------------------------------------------------
    def submit(self, method: str, *args: Any, payload: Any = None, attempts: int = 1,
               concurrent: bool = False, concurrency_group: str | None = None) -> Call:
        """Call `method(*args)` on the actor; `concurrent` calls run in `concurrency_group` beside the others."""
        bound = getattr(self.handle, method)
        if concurrency_group is not None:
            bound = bound.options(concurrency_group=concurrency_group)
        call = Call(method, bound.remote(*args), self.clock(), payload, attempts, concurrent)
        self.calls[call.ref] = call
        return call

    def ordered(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.concurrent]

    def pending(self, method: str) -> list[Call]:
        return [c for c in self.calls.values() if c.method == method]

    def allowance_s(self) -> float:
        """How long the head call may run: `call_timeout_s`, plus `startup_timeout_s` while the actor is new."""
        return self.policy.call_timeout_s + (self.policy.startup_timeout_s if self.fresh else 0.0)

    def head_started(self) -> float:
        """When the head of the ordered queue began running (the actor serves its calls in order)."""
        ordered = self.ordered()
        return max(ordered[0].submitted, self.last_done) if ordered else self.clock()

    def overdue(self, now: float | None = None) -> Call | None:
        """The call waiting past its allowance: the head of the ordered queue (counted from when the call before
        it answered), or a concurrent call (counted from its submission)."""
        now = self.clock() if now is None else now
        allowance = self.allowance_s()
        ordered = self.ordered()
        if ordered and now - self.head_started() > allowance:
            return ordered[0]
        return next((c for c in self.calls.values() if c.concurrent and now - c.submitted > allowance), None)

    def deadline_failure(self, call: Call) -> ActorFailure:
        return ActorFailure(self.name, call.method, f"no answer within {self.allowance_s():g} s", "timeout")

    def finish(self, ref: Any) -> tuple[Call, Any, float]:
        """Read the answered call `ref`: `(call, value, busy seconds)`. A failure raises `ActorFailure` and
        leaves the call at the head of the queue, so that `replace` hands it back for resubmission.

        Busy time runs from when the head of the ordered queue began running until the answer is seen; several
        answers seen at once add up to one interval, whatever order they are read in."""
        started = self.head_started()
        call = self.calls.pop(ref)
        try:
            value = remote.get(ref, actor=self.name, what=call.method, timeout_s=self.policy.call_timeout_s)
        except ActorFailure:
            self.calls[ref] = call
            self.calls.move_to_end(ref, last=False)
            raise
        return call, value, self.answered(call, started)

    def answered(self, call: Call, started: float | None = None) -> float:
        """Account for `call` having answered now (its ref already removed); returns its busy seconds."""
        now = self.clock()
        busy_s = 0.0
        if not call.concurrent:  # the ordered queue moved on
            busy_s = max(0.0, now - (started if started is not None else max(call.submitted, self.last_done)))
            self.busy_s += busy_s
            self.last_done = now
        self.fresh = False
        if call.method in self.progress:
            self.failures_in_a_row = 0
        return busy_s

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Submit and wait for one call (deadline `timeout_s`, default the allowance); `ActorFailure` on failure."""
        call = self.submit(method, *args)
        try:
            value = remote.get(call.ref, actor=self.name, what=method, timeout_s=timeout_s or self.allowance_s())
        finally:
            self.calls.pop(call.ref, None)
        self.last_done, self.fresh = self.clock(), False
        if method in self.progress:
            self.failures_in_a_row = 0
        return value

    # -- healing ----------------------------------------------------------------------------------------
    def replace(self, failure: ActorFailure, *, wait_ready: bool = False) -> tuple[Fault, list[Call]]:
        """Kill the actor and start a replacement; returns the fault record and the calls the old actor held
        (ordered ones first, discarded ones left out), for the owner to resubmit. With `wait_ready`, returns
        once the replacement answered `ready()`; a replacement that fails to start is recorded as a fault of its
        own (`at_start`) and counts as one more restart without progress. Raises the last failure once
        `max_consecutive_restarts` replacements made no progress."""
        orphans = [c for c in self.ordered() + [c for c in self.calls.values() if c.concurrent] if not c.discard]
        self.calls.clear()
        at_start = False
        while True:
            t0 = self.clock()
            self.failures_in_a_row += 1
            if self.failures_in_a_row > self.policy.max_consecutive_restarts:
                self.faults.record(Fault(self.name, self.kind, failure.kind, failure.cause, t0 - self.faults.t0,
                                         at_start=at_start, healed=False))
                raise failure
            if self.failures_in_a_row > 1:  # the previous replacement made no progress: give the cause time
                self.sleep(self.policy.backoff_s * 2 ** (self.failures_in_a_row - 2))
            remote.kill(self.handle)
            lost = self.name
            self.actor = self.spawn()
            self.restarts += 1
            self.fresh, self.last_done = True, self.clock()
            fault = self.faults.record(Fault(lost, self.kind, failure.kind, failure.cause, t0 - self.faults.t0,
                                             at_start=at_start))
            log.warning("%s replaced (restart %d): %s", self.name, self.restarts, failure)
            if not wait_ready:
                self.submit("ready")
                break
            try:
                self.info = self.call("ready", timeout_s=self.policy.startup_timeout_s)
                break
            except ActorFailure as e:
                fault.heal_s = self.clock() - t0
                log.warning("%s did not start (%s)", self.name, e)
                failure, at_start = e, True
        fault.heal_s = self.clock() - t0
        return fault, orphans

    def stop(self) -> None:
        remote.kill(self.handle)
        self.calls.clear()

"""`GeneratorSet`: the PPO stage's generator actors, each kept alive and on the newest published weights.

Each generator is a `raylhf.contracts.supervision.Supervised` slot (kind `generator`): its calls in order, a
deadline on the oldest, replacement on death, error or deadline, back-off and a cap on consecutive restarts
(`supervision.*`, `supervision.generator.*`). A replacement first applies the newest published weights, then
receives the prompts the old actor held, in order, once; the old actor is killed, so a late answer from it can
never arrive. An answered generate call is progress.

Weight loads are coalesced: a slot has at most one `load_weights` call outstanding, and when it finishes
behind the newest version the newest is sent next. So a slow or stuck generator pins at most one snapshot
in the object store, however many versions the learner publishes meanwhile.

With in-flight weight updates (`generation.weight_updates: in_flight`) a load is sent to the actor's
`weights` concurrency group and runs beside its generate call (applied between two decoding steps), so it is
not part of the slot's ordered queue: it has its own deadline from its submission, and its answer does not
count as the end of the queue's head call. A replacement actor's first load still goes through the ordered
queue, so its first generate call already computes with the newest weights.

Every generate call of the stage goes through here, the in-training evaluation's included (`generate_now`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from raylhf.contracts import remote
from raylhf.contracts.protocols import GenerationRequest, GeneratorService, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout
from raylhf.contracts.remote import ActorFailure, NamedActor
from raylhf.contracts.supervision import FaultLog, Supervised, SupervisionPolicy
from raylhf.orchestration.cursor import Draw

log = logging.getLogger(__name__)

WEIGHTS_GROUP = "weights"  # the generator actors' concurrency group for in-flight weight loads


class ActorFactory(Protocol):
    """Starts replacements for lost actors (`raylhf.orchestration.actor_set.PPOActors` implements it)."""

    def spawn_generator(self, index: int) -> NamedActor[GeneratorService]:
        """A new generator `index` on the initial policy (not waited for: calls on it run once it has loaded)."""
        ...

    def spawn_learner(self) -> NamedActor[Any]:
        """A new learner on the initial checkpoints (not waited for)."""
        ...


@dataclass
class GenerateCall:
    """What a generate call needs to be resubmitted, and what its answer is matched with."""

    draws: list[Draw]
    requests: list[GenerationRequest]
    sampling: SamplingSpec
    token: object | None = None  # set on a call made by `generate_now`, whose answer goes to its caller


@dataclass
class Generated:
    """One answered generate call: its draws and, per draw, the rollouts or None when refused."""

    draws: list[Draw]
    results: list[list[Rollout] | None]
    busy_s: float
    token: object | None = None


class _NoFactory:
    """Healing off: the first failure ends the run."""

    def spawn_generator(self, index: int) -> NamedActor[GeneratorService]:
        raise AssertionError("healing is off")

    def spawn_learner(self) -> NamedActor[Any]:
        raise AssertionError("healing is off")


class GeneratorSet:
    """Supervised generator slots with coalesced weight loads."""

    def __init__(self, policy: SupervisionPolicy, generators: Sequence[NamedActor[GeneratorService]],
                 factory: ActorFactory | None, faults: FaultLog, in_flight_weights: bool = False):
        if factory is None:  # no replacements: the first failure ends the run
            policy = SupervisionPolicy(**{**policy.__dict__, "max_consecutive_restarts": 0})
        factory = factory or _NoFactory()
        self.in_flight_weights = in_flight_weights  # generators started with weight_updates: in_flight
        self.slots = [Supervised("generator", (lambda i=i: factory.spawn_generator(i)), policy, faults, actor=g,
                                 progress=frozenset({"generate"})) for i, g in enumerate(generators)]
        self.versions = [0] * len(self.slots)  # weights each actor holds once its queued loads ran
        self.newest: tuple[int, Any] | None = None  # (version, snapshot ref) last published
        self.faults = faults
        self._backlog: list[Generated] = []  # the loop's answers that arrived while `generate_now` waited

    # -- views ----------------------------------------------------------------------------------------
    @property
    def actors(self) -> list[NamedActor[GeneratorService]]:
        return [s.actor for s in self.slots]

    def refs(self) -> list[Any]:
        return [ref for s in self.slots for ref in s.calls]

    def queued(self, i: int) -> int:
        return len(self.slots[i].pending("generate"))

    def generating(self) -> int:
        return sum(len(s.pending("generate")) for s in self.slots)

    def weights_current(self) -> bool:
        """Every generator holds the newest published version, with no load outstanding."""
        v = 0 if self.newest is None else self.newest[0]
        return all(version == v and not s.pending("load_weights") for s, version in zip(self.slots, self.versions))

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    # -- calls ----------------------------------------------------------------------------------------
    def submit(self, i: int, draws: list[Draw], requests: list[GenerationRequest], sampling: SamplingSpec,
               attempts: int = 1, token: object | None = None) -> None:
        self.slots[i].submit("generate", requests, sampling, payload=GenerateCall(draws, requests, sampling, token),
                             attempts=attempts)

    def _load(self, i: int) -> None:
        slot = self.slots[i]
        version, snapshot_ref = self.newest
        concurrent = self.in_flight_weights and not slot.fresh
        slot.submit("load_weights", snapshot_ref, payload=version, concurrent=concurrent,
                    concurrency_group=WEIGHTS_GROUP if concurrent else None)

    def publish(self, version: int, snapshot_ref: Any) -> None:
        """Send a new snapshot to every generator that is not already loading one (those get it next)."""
        self.newest = (version, snapshot_ref)
        for i, slot in enumerate(self.slots):
            if not slot.pending("load_weights"):
                self._load(i)

    def discard_generations(self) -> None:
        """Answers of the generate calls now in flight are no longer wanted (the learner was rewound)."""
        for slot in self.slots:
            for call in slot.pending("generate"):
                call.discard = True

    # -- answers --------------------------------------------------------------------------------------
    def collect(self, done: set) -> list[Generated]:
        """Process finished calls among `done`; replace the actor of any that failed."""
        out, self._backlog = self._backlog, []
        for i, slot in enumerate(self.slots):
            for ref in [r for r in slot.calls if r in done]:
                if ref not in slot.calls:  # the slot was replaced while processing an earlier call
                    break
                try:
                    call, value, busy_s = slot.finish(ref)
                except ActorFailure as e:
                    self._replace(i, e)
                    break
                if call.method == "load_weights":
                    self.versions[i] = call.payload
                    if self.newest is not None and call.payload < self.newest[0] and not slot.pending("load_weights"):
                        self._load(i)
                elif call.method == "generate" and not call.discard:
                    for r in value:
                        if isinstance(r, RequestError):
                            log.warning("prompt %s refused: %s", r.prompt_id, r.reason)
                    results = [None if isinstance(r, RequestError) else r for r in value]
                    out.append(Generated(call.payload.draws, results, busy_s, call.payload.token))
        return out

    def check_deadlines(self) -> None:
        """Replace every generator whose oldest call has waited past its deadline."""
        for i, slot in enumerate(self.slots):
            late = slot.overdue()
            if late is not None:
                self._replace(i, slot.deadline_failure(late))

    def _replace(self, i: int, failure: ActorFailure) -> None:
        slot = self.slots[i]
        fault, orphans = slot.replace(failure)
        self.versions[i] = 0
        if self.newest is not None:
            self._load(i)
        pending = [c for c in orphans if c.method == "generate"]
        for call in pending:
            if call.attempts >= slot.policy.max_attempts:
                raise ActorFailure(slot.name, "generate", f"{len(call.payload.draws)} prompts lost {call.attempts} "
                                   f"times (supervision.max_attempts); last: {failure.cause}", failure.kind)
            p = call.payload
            self.submit(i, p.draws, p.requests, p.sampling, call.attempts + 1, p.token)
        fault.resubmitted = sum(len(c.payload.draws) for c in pending)
        log.warning("%s: %d prompts resubmitted", slot.name, fault.resubmitted)

    # -- blocking helpers (sync mode, evaluation, the end of a run) -------------------------------------
    def wait_until(self, condition: Callable[[], bool], on_generated: Callable[[Generated], None] | None = None,
                   extra: Callable[[], None] | None = None) -> None:
        """Drive answers, deadlines and replacements until `condition()` holds."""
        while not condition():
            for generated in self.collect(set(remote.wait(self.refs(), 0.5))):
                if on_generated is not None:
                    on_generated(generated)
            self.check_deadlines()
            if extra is not None:
                extra()

    def generate_now(self, i: int, requests: list[GenerationRequest], sampling: SamplingSpec
                     ) -> list[list[Rollout] | None]:
        """Generate on generator `i` and wait for the answer (healing as the loop does; the answers of the
        loop's own calls that arrive meanwhile are kept for it). Per request, the rollouts or None if refused."""
        token = object()
        self.submit(i, [], list(requests), sampling, token=token)
        while True:
            answered = self.collect(set(remote.wait(self.refs(), 0.5)))
            mine = [g for g in answered if g.token is token]
            self._backlog = [g for g in answered if g.token is not token]
            if mine:
                return mine[0].results
            self.check_deadlines()

    def checksums(self) -> list[dict[str, str]]:
        return remote.get_all([s.handle.checksums.remote() for s in self.slots], [s.name for s in self.slots],
                              "checksums", self.slots[0].policy.call_timeout_s)

"""`RewardPool`: N `ScorerActor`s behind one `score()` call, plus a submit/ready API for the async driver.

Semantics
  - Dispatch: each request (a list of rollouts) goes to the least-loaded live actor.
  - Backpressure: an actor holds at most `max_in_flight` requests. With every actor full,
    `submit(block=True)` waits (driving completions meanwhile) until a slot frees, and
    `submit(block=False)` raises `PoolFullError`. Completed results wait in the pool until `ready()`
    collects them; they no longer occupy a slot.
  - Supervision: each actor is a `raylhf.contracts.supervision.Supervised` slot (kind `scorer`, the
    `supervision` config with its `scorer` overrides). An actor runs its requests one at a time in
    submission order, so the clock of a request starts when it reaches the head of its actor's queue; a
    head request unanswered after `call_timeout_s` marks the actor hung. A hung actor, or one that dies
    (any of `raylhf.contracts.remote.actor_lost_errors()`: `RayActorError` / `ActorDiedError`, crashed
    worker, lost object, OOM kill), is killed, replaced (the pool waits until the replacement has loaded
    its models) and all its requests resubmitted. A request is dispatched at most `max_attempts` times;
    beyond that it fails with `ScoringError`. A delivered request is progress; past
    `max_consecutive_restarts` replacements without one the failure stops the run (`ScorerStartupError`
    when the replacements did not start).
  - Busy time: by the same clock, an actor is busy from when a request reaches the head of its queue
    until its answer is seen (`stats().busy_s`, summed over actors, and per actor). Time spent on
    requests a lost actor never answered is not counted.
  - Exactly once: every request has one live object ref at a time; refs of a replaced actor are
    forgotten, so a late answer can never be delivered, and each request id is delivered once.
    Nothing is dropped: a request leaves the pool only as a result or as a `ScoringError`.
  - Quarantine: a rollout that cannot be scored (empty or too long, a token id outside a model's
    vocabulary, a NaN/inf score, reference logprob or function reward; `raylhf.reward_service.rejects`)
    is left out of its request's results, which keep the request order of the others; it is counted by
    cause (`stats()["rejected"]`, `["rejected_by_cause"]`) and appended with its cause to the rejects
    file. A rollout never gets a made-up reward, and the others of its request are delivered.
  - Reject rate: once `reject_rate_min_rollouts` rollouts finished scoring (delivered or quarantined),
    a share of quarantined ones above `max_reject_rate` stops the run: `ScoringError` naming the rate,
    the limit, the key and the rejects file, raised from `submit()` / `ready()` / `score()` from then on.
  - Failures: an exception inside the scorer that is not about one rollout (a reward function raising,
    a model failing) raises `ScoringError` naming the actor, the request and the cause, from `ready()` /
    `score()`. It is never turned into a reward.
  - Every remote wait has a deadline: answers are collected with `raylhf.contracts.remote.wait` up to the
    next head request's deadline, and a result is read only once it is ready; actor start-up waits go
    through `raylhf.contracts.remote.get_all`. No blocking wait on one actor.
  - Normalisation/clipping runs here, in the driver, once per delivered request, so all actors share
    one set of running statistics (`state_dict()` saves them).
  - Start-up: the actors of a new pool must all start (`ScorerStartupError` otherwise). A replacement
    that fails to start is a fault of its own and is tried again after `backoff_s`, doubled after each
    further failure, up to the restart cap; then `ScorerStartupError`.
Replacing an actor blocks the calling thread while the new actor loads its models (bounded by the restart
cap × `startup_timeout_s` plus the backoff). The pool is not thread-safe: drive it from one thread. The
request limits (`max_in_flight`, `request_size`, `max_reject_rate`, `reject_rate_min_rollouts`) are fields of
the `RewardConfig` the pool is built from; deadlines, restarts and attempts those of its `SupervisionPolicy`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from raylhf.configs.schema import RewardConfig, SupervisionConfig
from raylhf.contracts import remote
from raylhf.contracts.model_files import ModelFiles, share_dir
from raylhf.contracts.protocols import ActorInfo, PoolStats, ScorerStats
from raylhf.contracts.records import Rollout
from raylhf.contracts.remote import ActorFailure, NamedActor, get_all
from raylhf.contracts.supervision import FaultLog, Supervised, SupervisionPolicy
from raylhf.reward_service.actor import ScorerActor
from raylhf.reward_service.errors import PoolFullError, ScorerStartupError, ScoringError
from raylhf.reward_service.normalize import RewardTransform
from raylhf.reward_service.programmatic import validate_sources
from raylhf.reward_service.rejects import NONFINITE_REWARD, Reject, RejectLog

log = logging.getLogger(__name__)

@dataclass
class _Request:
    request_id: int
    rollouts: list[Rollout]
    attempts: int = 0
    slot: Supervised | None = None
    ref: Any = None


class RewardPool:
    """N scorer actors; `score(rollouts)` blocks, `submit()` / `ready()` overlap scoring with other work.

    Args:
        cfg: the reward section: actor count and resources, request limits and timeouts, and what each
            actor's `RewardScorer` computes (sources, checkpoints, dtype, normalisation).
        rm_path: reward-model checkpoint used when `cfg.rm_path` is unset (the run's own RM stage output);
            `cfg.rm_path` wins when set. Loaded only when a source is `rm`, which then needs one of the two.
        ref_path: reference (SFT) policy checkpoint used when `cfg.ref_path` is unset (the run's SFT
            checkpoint); `cfg.ref_path` wins when set. Loaded only when `cfg.ref_logprobs`; with neither
            set, the actors return no reference logprobs.
        trust_remote_code: let the checkpoints run their own code (only if the run config says so).
        name: prefix of the actors' labels ("scorer-0", "scorer-1", ...).
        rejects_path: JSON Lines file the quarantined rollouts are appended to (format in
            `raylhf.reward_service.rejects`); None: they are only counted and logged.
        supervision: deadlines, restart cap, back-off and attempts of the scorers (default: the `supervision`
            section's defaults for kind `scorer`).
        faults: the stage's fault log the replacements are recorded in (a new one by default).
    The checkpoints are read where the driver runs; scorers on other nodes get their files through the
    object store (`raylhf.contracts.model_files`).
    `score()` and `ready()` return the scored rollouts only, so `submitted - returned` rollouts of a
    request were quarantined.
    """

    def __init__(
        self,
        cfg: RewardConfig,
        *,
        rm_path: str | os.PathLike | ModelFiles | None,
        ref_path: str | os.PathLike | ModelFiles | None,
        trust_remote_code: bool = False,
        name: str = "scorer",
        rejects_path: str | os.PathLike | None = None,
        supervision: SupervisionPolicy | None = None,
        faults: FaultLog | None = None,
    ):
        validate_sources(cfg.sources)  # a bad import path fails here, in the driver, before any actor starts
        self.cfg = cfg
        self.policy = supervision or SupervisionConfig().policy("scorer")
        self.faults = faults or FaultLog()
        self._actor_args = dict(
            # `cfg.*_path` wins, as in `RewardScorer`; shared so that scorers on any node can read them
            rm_path=share_dir(cfg.rm_path or rm_path),
            ref_path=share_dir(cfg.ref_path or ref_path),
            trust_remote_code=trust_remote_code,
        )
        self.transform = RewardTransform(cfg)
        self._ids = itertools.count()
        self._by_ref: dict[Any, _Request] = {}
        self._completed: dict[int, list[Rollout]] = {}
        self._failed: list[ScoringError] = []
        self._abandoned: set[int] = set()
        self._answered: dict[str, int] = {}  # requests delivered, per actor name, over all restarts
        self._counters = dict(requests=0, rollouts_scored=0, resubmitted=0, failures=0)
        self._rejects = RejectLog(
            rejects_path, max_rate=cfg.max_reject_rate, min_rollouts=cfg.reject_rate_min_rollouts
        )
        self._over_limit: ScoringError | None = None  # the reject rate passed its limit: the run must stop
        self._slots: list[Supervised] = []
        self._closed = False
        labels = [f"{name}-{i}" for i in range(cfg.num_actors)]
        handles = [self._spawn(label) for label in labels]
        try:
            infos = self._await_ready(labels, handles)
        except BaseException:
            for h in handles:
                remote.kill(h)
            self._rejects.close()
            raise
        self._slots = [Supervised("scorer", (lambda label=label: NamedActor(label, self._spawn(label))), self.policy,
                                  self.faults, actor=NamedActor(label, h), progress=frozenset({"score"}))
                       for label, h in zip(labels, handles)]
        self.actor_info = infos

    # -- public API ----------------------------------------------------------------------------------

    @property
    def num_actors(self) -> int:
        return len(self._slots)

    @property
    def capacity(self) -> int:
        return len(self._slots) * self.cfg.max_in_flight

    @property
    def num_in_flight(self) -> int:
        return len(self._by_ref)

    def has_capacity(self) -> bool:
        return any(len(s.calls) < self.cfg.max_in_flight for s in self._slots)

    @property
    def actors(self) -> dict[str, Any]:
        """Live actor handles by label (for inspection and fault-injection tests)."""
        return {s.name: s.handle for s in self._slots}

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._slots)

    def submit(self, rollouts: Sequence[Rollout], block: bool = True, timeout: float | None = None) -> int:
        """Queue one request; returns its id. Full pool: waits (block=True, at most `timeout` s, None =
        until a slot frees) or raises `PoolFullError` (block=False, or the wait timed out)."""
        self._check_open()
        if self._over_limit is not None:
            raise self._over_limit
        rollouts = list(rollouts)
        request = _Request(next(self._ids), rollouts)
        self._counters["requests"] += 1
        if not rollouts:
            self._completed[request.request_id] = []
            return request.request_id
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.has_capacity():
            if not block:
                raise PoolFullError(f"all {self.num_actors} scorer actors hold {self.cfg.max_in_flight} requests")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise PoolFullError(f"no free scorer slot within {timeout} s")
            self._pump(1.0 if remaining is None else min(1.0, remaining))
        self._dispatch(request)
        return request.request_id

    def ready(self, timeout: float = 0.0) -> list[tuple[int, list[Rollout]]]:
        """Completed requests as (request_id, scored rollouts in request order, quarantined ones left out),
        sorted by id, waiting up to `timeout` seconds for the first one if none is done yet. Raises
        `ScoringError` for a failed request (the others stay collectable by the next call) and, from then
        on, once the reject rate is past its limit."""
        self._check_open()
        deadline = time.monotonic() + timeout
        while True:
            self._raise_failures()
            if self._completed or not self._by_ref:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._pump(remaining)
        self._pump(0.0)
        self._raise_failures()
        out = sorted(self._completed.items())
        self._completed.clear()
        return out

    def score(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        """Score a batch (split over the actors) and return it in input order, quarantined rollouts left
        out. Blocks until done."""
        self._check_open()
        rollouts = list(rollouts)
        if not rollouts:
            return []
        size = min(self.cfg.request_size, math.ceil(len(rollouts) / self.num_actors))
        chunks = [rollouts[i : i + size] for i in range(0, len(rollouts), size)]
        mine: list[int] = []
        try:
            for chunk in chunks:
                mine.append(self.submit(chunk))
            while any(rid not in self._completed for rid in mine):
                self._raise_failures()
                self._pump(1.0)
            self._raise_failures()
        except BaseException:
            self._abandon(mine)
            raise
        out: list[Rollout] = []
        for rid in mine:
            out.extend(self._completed.pop(rid))
        return out

    def stats(self) -> PoolStats:
        rejects = self._rejects.stats()
        return PoolStats(
            **self._counters, rejected=rejects["rejected"], rejected_by_cause=rejects["rejected_by_cause"],
            reject_rate=rejects["reject_rate"], in_flight=self.num_in_flight, completed_waiting=len(self._completed),
            busy_s=sum(s.busy_s for s in self._slots),
            actors={s.name: ScorerStats(s.restarts, self._answered.get(s.name, 0), len(s.calls), s.busy_s)
                    for s in self._slots},
            reward_running_mean=self.transform.mean, reward_running_std=self.transform.std,
        )

    @property
    def rejects_path(self) -> str | None:
        return self._rejects.stats()["rejects_path"]

    def state_dict(self) -> dict[str, Any]:
        """The running reward statistics and the reject counts (a resumed run keeps its reject rate)."""
        return {"transform": self.transform.state_dict(), "rejects": self._rejects.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.transform.load_state_dict(state["transform"])
        if "rejects" in state:  # absent from states saved before rejects were counted
            self._rejects.load_state_dict(state["rejects"])

    def shutdown(self) -> None:
        """Kill every actor; requests still in flight are dropped with them."""
        if self._closed:
            return
        for slot in self._slots:
            slot.stop()
        self._by_ref.clear()
        self._rejects.close()
        self._closed = True

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- internals -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("RewardPool is shut down")

    def _spawn(self, label: str) -> Any:
        return ScorerActor.options(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus,
                                   resources=dict(self.cfg.resources)).remote(
            label, self.cfg.model_copy(update={"rm_path": None, "ref_path": None}), **self._actor_args
        )

    def _await_ready(self, labels: list[str], handles: list[Any]) -> list[ActorInfo]:
        """Each actor's `ready()` info once its models are loaded; `ScorerStartupError` otherwise."""
        try:
            return get_all([h.ready.remote() for h in handles], labels, "model loading", self.policy.startup_timeout_s)
        except ActorFailure as e:
            raise ScorerStartupError(f"scorer actor {e}", actor=e.actor, cause=e.cause) from e

    def _least_loaded(self) -> Supervised:
        return min(self._slots, key=lambda s: (len(s.calls), s.last_done))  # ties: the first slot

    def _dispatch(self, request: _Request, slot: Supervised | None = None) -> None:
        slot = slot or self._least_loaded()
        request.attempts += 1
        request.slot = slot
        request.ref = slot.submit("score", request.rollouts, payload=request, attempts=request.attempts).ref
        self._by_ref[request.ref] = request

    def _pump(self, timeout: float) -> None:
        """Wait up to `timeout` s for answers; handle results, failures, deaths and timeouts."""
        if not self._by_ref:
            return
        now = time.monotonic()
        next_deadline = min(s.head_started() + s.allowance_s() for s in self._slots if s.calls)
        done = remote.wait(list(self._by_ref), max(0.0, min(timeout, next_deadline - now)))
        lost: dict[int, tuple[Supervised, ActorFailure]] = {}
        for ref in done:
            request = self._by_ref.get(ref)
            if request is None:  # its actor was replaced meanwhile: the request lives on elsewhere
                continue
            slot = request.slot
            try:
                _, result, _ = slot.finish(ref)
            except ActorFailure as e:
                if e.kind == "error":  # the scorer raised on this request and lives on: the request fails
                    slot.answered(slot.calls.pop(ref))
                    self._by_ref.pop(ref, None)
                    self._fail(request, f"scorer actor {_label(slot)} failed on request {request.request_id}",
                               e.cause, e)
                else:  # stays with the slot; the replacement resubmits it
                    lost.setdefault(id(slot), (slot, e))
                continue
            self._by_ref.pop(ref, None)
            self._deliver(request, result)
        for slot in self._slots:
            late = slot.overdue() if id(slot) not in lost else None
            if late is not None:
                lost[id(slot)] = (slot, slot.deadline_failure(late))
        for slot, failure in lost.values():
            self._replace(slot, failure)

    def _deliver(self, request: _Request, answer: tuple[list[Rollout], list[Reject]]) -> None:
        rid = request.request_id
        if rid in self._abandoned:
            self._abandoned.discard(rid)
            return
        result, rejects = answer
        sent = [r.sample_id for r in request.rollouts]
        if not _answers(sent, [r.sample_id for r in result], [r.sample_id for r in rejects]):
            where = f"scorer actor {_label(request.slot)} answered request {rid} with other rollouts"
            self._fail(request, where, "mismatch")
            return
        rejects = list(rejects)
        if result and not self.transform.is_identity:
            scores = self.transform([r.score for r in result])
            for r, v in zip(result, scores):
                if not math.isfinite(v):
                    rejects.append(Reject.of(r, NONFINITE_REWARD, f"normalised reward is {v}"))
            result = [_with_score(r, v) for r, v in zip(result, scores) if math.isfinite(v)]
        self._completed[rid] = result
        self._answered[request.slot.name] = self._answered.get(request.slot.name, 0) + 1
        self._counters["rollouts_scored"] += len(result)
        self._rejects.record(rejects, scored=len(result), where=f"request {rid}, scorer actor {_label(request.slot)}")
        reason = self._rejects.over_limit()
        if reason is not None and self._over_limit is None:
            self._over_limit = ScoringError(reason, request_id=rid, cause="reward.max_reject_rate")

    def _fail(self, request: _Request, where: str, cause: str, exc: BaseException | None = None) -> None:
        self._counters["failures"] += 1
        if request.request_id in self._abandoned:
            self._abandoned.discard(request.request_id)
            return
        actor = _label(request.slot) if request.slot is not None else None
        err = ScoringError(f"{where}: {cause}", actor=actor, request_id=request.request_id, cause=cause)
        if exc is not None:
            err.__cause__ = exc
        self._failed.append(err)

    def _raise_failures(self) -> None:
        if self._over_limit is not None:
            raise self._over_limit
        if self._failed:
            raise self._failed.pop(0)

    def _abandon(self, request_ids: Sequence[int]) -> None:
        """Results of these requests are no longer wanted (their caller saw an error)."""
        for rid in request_ids:
            if self._completed.pop(rid, None) is None and any(r.request_id == rid for r in self._by_ref.values()):
                self._abandoned.add(rid)

    def _replace(self, slot: Supervised, failure: ActorFailure) -> None:
        """Kill `slot`'s actor, start a fresh one (waiting until it has loaded), resubmit what the old one held."""
        held: list[_Request] = [c.payload for c in slot.calls.values()]
        for request in held:
            self._by_ref.pop(request.ref, None)
        try:
            _, orphans = slot.replace(failure, wait_ready=True)
        except ActorFailure as e:
            for request in held:
                self._fail(request, f"{failure}; its replacement failed", str(e), e)
            if e is failure:  # out of restarts on a running actor
                raise
            raise ScorerStartupError(
                f"scorer actor {slot.name} did not start in {slot.failures_in_a_row - 1} attempts "
                f"(supervision.max_consecutive_restarts); last failure: {e}", actor=e.actor, cause=e.cause) from e
        self.actor_info[self._slots.index(slot)] = slot.info
        for request in (call.payload for call in orphans):
            if request.request_id in self._abandoned:
                self._abandoned.discard(request.request_id)
                continue
            if request.attempts >= self.policy.max_attempts:
                self._fail(request, f"request {request.request_id} lost {request.attempts} times "
                           "(supervision.max_attempts)", str(failure))
                continue
            self._counters["resubmitted"] += 1
            self._dispatch(request)


def _label(slot: Supervised) -> str:
    return f"{slot.name} (restart {slot.restarts})" if slot.restarts else slot.name


def _answers(sent: Sequence[str], scored: Sequence[str], rejected: Sequence[str]) -> bool:
    """Whether an actor's answer covers exactly the rollouts sent, the scored ones in the order sent."""
    if Counter(scored) + Counter(rejected) != Counter(sent):
        return False
    remaining = iter(sent)
    return all(sid in remaining for sid in scored)


def _with_score(rollout: Rollout, score: float) -> Rollout:
    return dataclasses.replace(rollout, score=score)


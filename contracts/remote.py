"""Waiting on Ray actors: the one layer that applies deadlines and names what failed.

Every remote wait in raylhf goes through here, so every wait has a deadline and every failure reads the
same way: ``<actor>: <what> <failed|did not finish|died>: <cause>``.

- `NamedActor[H]` — a handle with the name every error about it uses.
- `wait(refs, timeout_s)` — the refs among `refs` that have answered, waiting up to `timeout_s` for the first.
- `get(ref, actor=..., what=..., timeout_s=...)` — one result.
- `get_all(refs, actors, what, timeout_s)` — one result per actor under one shared deadline, waiting on
  whichever answers first (never a blocking `ray.get` on one slow actor while another has failed).
- `cause(exc)` — the original exception of a Ray error as ``Type: message`` (the full trace stays
  chained on the raised `ActorFailure`).
- `ActorFailure.kind` tells a caller what healing makes sense: ``"timeout"`` (hung), ``"died"`` (the
  process is gone) or ``"error"`` (the call raised; the actor lives).

- `kill(handle)` — end an actor for good (a late answer of it can never arrive).

The refs may also be the futures of `raylhf.contracts.local_actor.LocalActor` (an object served like an actor
in this process): the driver and its supervision then run with in-process stand-ins, without Ray.

Only this module of `contracts` imports Ray, and only when a function here is called on a Ray ref.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Generic, Literal, Sequence, TypeVar

from raylhf.contracts.local_actor import LocalActor, LocalActorDied

FailureKind = Literal["timeout", "died", "error"]
H = TypeVar("H")


@dataclass(frozen=True)
class NamedActor(Generic[H]):
    """An actor handle (a Ray `ActorHandle`, or a `LocalActor`) and the name its failures are reported under."""

    name: str
    handle: H


class ActorFailure(RuntimeError):
    """A remote call on a named actor failed, died or missed its deadline."""

    def __init__(self, actor: str, what: str, cause: str, kind: FailureKind):
        verb = {"timeout": "did not finish", "died": "died during", "error": "failed"}[kind]
        super().__init__(f"{actor}: {what} {verb}: {cause}" if kind != "died" else f"{actor} {verb} {what}: {cause}")
        self.actor, self.what, self.cause, self.kind = actor, what, cause, kind


def cause(exc: BaseException) -> str:
    """The original exception behind a Ray error in one line, ``Type: message``."""
    import ray

    inner = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(inner, BaseException):
        return f"{type(inner).__name__}: {inner}"
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray's own errors put a banner first and the reason last.
    return f"{type(exc).__name__}: {lines[-1].strip() if lines else ''}"


def actor_lost_errors() -> tuple[type[BaseException], ...]:
    """Ray errors after which the actor is gone (or unusable) and its work must move elsewhere."""
    from ray.exceptions import ObjectLostError, OutOfMemoryError, RayActorError, WorkerCrashedError

    return (RayActorError, WorkerCrashedError, ObjectLostError, OutOfMemoryError)


def failure(exc: BaseException, actor: str, what: str) -> ActorFailure:
    """The `ActorFailure` for an exception raised by `ray.get` of `actor`'s `what`."""
    import ray

    if isinstance(exc, ray.exceptions.GetTimeoutError):
        kind: FailureKind = "timeout"
    elif isinstance(exc, actor_lost_errors()):
        kind = "died"
    else:
        kind = "error"
    err = ActorFailure(actor, what, cause(exc), kind)
    err.__cause__ = exc
    return err


def _local(refs: Sequence[Any]) -> bool:
    return bool(refs) and all(isinstance(r, Future) for r in refs)


def wait(refs: Sequence[Any], timeout_s: float) -> list[Any]:
    """The refs of `refs` that have answered (in `refs` order), after waiting up to `timeout_s` seconds for
    the first one; [] when none answered in time."""
    if not refs:
        return []
    if _local(refs):
        done, _ = wait_futures(refs, timeout=max(0.0, timeout_s), return_when=FIRST_COMPLETED)
        return [r for r in refs if r in done]
    import ray

    ready, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.0, timeout_s))
    if ready:  # take every answer that is in, not just the first
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    return ready


def kill(handle: Any) -> None:
    """End the actor for good: no restart, and its unanswered calls fail as lost."""
    if isinstance(handle, LocalActor):
        handle.kill()
        return
    import ray

    ray.kill(handle, no_restart=True)


def node_id() -> str | None:
    """This process's Ray node id; None outside Ray (in-process stand-ins, where every path is local)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _get_local(ref: Future, actor: str, what: str, timeout_s: float) -> Any:
    try:
        return ref.result(timeout=timeout_s)
    except FutureTimeout as e:
        raise ActorFailure(actor, what, f"no answer within {timeout_s:g} s", "timeout") from e
    except LocalActorDied as e:
        raise ActorFailure(actor, what, f"{type(e).__name__}: {e}", "died") from e
    except Exception as e:  # the call raised inside the actor, which lives on
        raise ActorFailure(actor, what, f"{type(e).__name__}: {e}", "error") from e


def get(ref: Any, *, actor: str, what: str, timeout_s: float) -> Any:
    """`ray.get(ref)` within `timeout_s` seconds; any failure raises `ActorFailure` naming `actor`."""
    if isinstance(ref, Future):
        return _get_local(ref, actor, what, timeout_s)
    import ray

    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        raise ActorFailure(actor, what, f"no answer within {timeout_s:g} s", "timeout") from e
    except ray.exceptions.RayError as e:
        raise failure(e, actor, what) from e


def get_all(refs: Sequence[Any], actors: Sequence[str], what: str, timeout_s: float) -> list[Any]:
    """One result per ref (in order) under one deadline; the first failure raises `ActorFailure`."""
    if len(refs) != len(actors):
        raise ValueError(f"{len(refs)} refs but {len(actors)} actor names")
    deadline = time.monotonic() + timeout_s
    pending = dict(zip(refs, actors))
    results: dict[Any, Any] = {}
    while pending:
        ready = wait(list(pending), max(0.0, deadline - time.monotonic()))
        if not ready:
            late = ", ".join(pending.values())
            raise ActorFailure(late, what, f"no answer within {timeout_s:g} s", "timeout")
        for ref in ready:
            results[ref] = get(ref, actor=pending.pop(ref), what=what, timeout_s=timeout_s)
    return [results[r] for r in refs]

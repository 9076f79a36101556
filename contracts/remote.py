"""Waiting on Ray actors: the one layer that applies deadlines and names what failed.

Every remote wait in raylhf goes through here, so every wait has a deadline and every failure reads the
same way: ``<actor>: <what> <failed|did not finish|died>: <cause>``.

- `NamedActor` — a handle with the name every error about it uses.
- `get(ref, actor=..., what=..., timeout_s=...)` — one result.
- `get_all(refs, actors, what, timeout_s)` — one result per actor under one shared deadline, waiting on
  whichever answers first (never a blocking `ray.get` on one slow actor while another has failed).
- `cause(exc)` — the original exception of a Ray error as ``Type: message`` (the full trace stays
  chained on the raised `ActorFailure`).
- `ActorFailure.kind` tells a caller what healing makes sense: ``"timeout"`` (hung), ``"died"`` (the
  process is gone) or ``"error"`` (the call raised; the actor lives).

Only this module of `contracts` imports Ray, and only when a function here is called.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

FailureKind = Literal["timeout", "died", "error"]


@dataclass(frozen=True)
class NamedActor:
    """A Ray actor handle and the name its failures are reported under."""

    name: str
    handle: Any


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


def get(ref: Any, *, actor: str, what: str, timeout_s: float) -> Any:
    """`ray.get(ref)` within `timeout_s` seconds; any failure raises `ActorFailure` naming `actor`."""
    import ray

    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        raise ActorFailure(actor, what, f"no answer within {timeout_s:g} s", "timeout") from e
    except ray.exceptions.RayError as e:
        raise failure(e, actor, what) from e


def get_all(refs: Sequence[Any], actors: Sequence[str], what: str, timeout_s: float) -> list[Any]:
    """One result per ref (in order) under one deadline; the first failure raises `ActorFailure`."""
    import ray

    if len(refs) != len(actors):
        raise ValueError(f"{len(refs)} refs but {len(actors)} actor names")
    deadline = time.monotonic() + timeout_s
    pending = dict(zip(refs, actors))
    results: dict[Any, Any] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            late = ", ".join(pending.values())
            raise ActorFailure(late, what, f"no answer within {timeout_s:g} s", "timeout")
        for ref in ready:
            results[ref] = get(ref, actor=pending.pop(ref), what=what, timeout_s=timeout_s)
    return [results[r] for r in refs]

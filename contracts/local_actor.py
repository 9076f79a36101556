"""`LocalActor`: an object served like a Ray actor inside this process, for stand-ins that need no Ray.

`LocalActor(obj).method.remote(*args)` queues the call on the actor's own thread and returns a
`concurrent.futures.Future`; calls run one at a time in submission order, as a Ray actor runs them.
`.method.options(concurrency_group=g).remote(...)` runs on group `g`'s own thread instead (Ray's concurrency
groups). `kill()` fails every unanswered call with `LocalActorDied` (a call still running on its thread is
abandoned, as a killed process would be). `raylhf.contracts.remote` waits on these futures as on Ray refs.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable


class LocalActorDied(RuntimeError):
    """The actor was killed before the call answered."""


class _Group:
    """One thread running the calls of one concurrency group in order (daemon: a hung call never blocks exit)."""

    def __init__(self, name: str):
        self.calls: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while (item := self.calls.get()) is not None:
            fn, future = item
            if future.done():  # killed while queued
                continue
            try:
                try:
                    value = fn()
                except BaseException as e:  # noqa: BLE001 - delivered to the caller, as Ray delivers a task error
                    future.set_exception(e)
                else:
                    future.set_result(value)
            except InvalidStateError:  # killed while the call ran: its answer is not delivered
                pass


class _Method:
    def __init__(self, actor: "LocalActor", name: str, group: str | None = None):
        self.actor, self.name, self.group = actor, name, group

    def options(self, concurrency_group: str | None = None, **_: Any) -> "_Method":
        return _Method(self.actor, self.name, concurrency_group)

    def remote(self, *args: Any, **kwargs: Any) -> Future:
        return self.actor._submit(self.group, lambda: getattr(self.actor.obj, self.name)(*args, **kwargs))


class LocalActor:
    """`obj` behind an actor-like handle: `handle.method.remote(...)` -> Future."""

    def __init__(self, obj: Any):
        self.obj = obj
        self._groups: dict[str | None, _Group] = {}
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self.dead = False

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    def _submit(self, group: str | None, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._lock:
            if self.dead:
                future.set_exception(LocalActorDied("the actor was killed"))
                return future
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)
            if group not in self._groups:
                self._groups[group] = _Group(f"local-actor-{group or 'default'}")
            self._groups[group].calls.put((fn, future))
        return future

    def kill(self) -> None:
        with self._lock:
            self.dead = True
            pending, self._pending = list(self._pending), set()
            for group in self._groups.values():
                group.calls.put(None)
        for future in pending:
            if not future.done():
                future.set_exception(LocalActorDied("the actor was killed"))

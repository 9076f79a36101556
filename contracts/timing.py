"""`PhaseTimer`: wall seconds per labelled phase, the one timer of the driver's loop and the learner's step."""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Iterator


class PhaseTimer:
    """Wall seconds spent in each labelled phase. Phases must not nest: each second is counted once, so the
    phases of one loop add up to at most its wall time."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def reset(self) -> dict[str, float]:
        """The seconds so far, and start again from zero."""
        out, self.seconds = dict(self.seconds), collections.defaultdict(float)
        return out

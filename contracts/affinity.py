"""Pinning an actor's process to CPU cores (`generation.cpus`, `reward.cpus`, `ppo.cpus`).

Ray's `num_cpus` is bookkeeping: it decides where an actor may start and leaves the operating system free
to run every process on every core. With as many busy actors as cores that costs time: a learner whose
thread the scheduler moves around or shares with a generator's runs its step slower (measured in
`benchmarks/bench_pipeline.py`). Pinning gives each actor the cores the config names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def pin_process(cpus: Sequence[int], key: str) -> None:
    """Restrict every thread of this process to the CPU ids `cpus` (Linux numbering); an empty list leaves
    the process alone. Threads started later inherit the mask of the thread that starts them, so the torch
    and vLLM threads an actor creates after this stay on those CPUs too.

    Raises ValueError naming `key` when a CPU id is not one this process may run on, or when the platform
    has no CPU affinity (not Linux)."""
    if not cpus:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"{key}: pinning to CPUs needs Linux (os.sched_setaffinity); leave it empty here")
    allowed = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise ValueError(f"{key}: CPU ids {missing} are not available on this node (it has {sorted(allowed)})")
    mask = set(cpus)
    for task in Path("/proc/self/task").iterdir():  # every thread, not only the calling one
        try:
            os.sched_setaffinity(int(task.name), mask)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def current_cpus() -> list[int]:
    """The CPU ids this process may run on ([] where the platform does not say)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

"""Pinning a process to CPUs: every thread gets the mask, bad ids are refused naming the key."""

import os
import threading

import pytest

from raylhf.contracts.affinity import pin_process

linux = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")


@linux
def test_every_thread_of_the_process_is_pinned_and_new_threads_inherit():
    before = os.sched_getaffinity(0)
    cpu = min(before)
    started, stop = threading.Event(), threading.Event()
    seen: dict[str, set[int]] = {}

    def running_before_pinning():
        started.set()
        stop.wait()
        seen["old thread"] = os.sched_getaffinity(0)

    t = threading.Thread(target=running_before_pinning)
    t.start()
    started.wait()
    try:
        pin_process([cpu], "ppo.cpus")
        late = threading.Thread(target=lambda: seen.setdefault("new thread", os.sched_getaffinity(0)))
        late.start()
        late.join()
        stop.set()
        t.join()
        assert os.sched_getaffinity(0) == {cpu}
        assert seen == {"old thread": {cpu}, "new thread": {cpu}}
    finally:
        stop.set()
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), before)
            except ProcessLookupError:
                pass


@linux
def test_a_cpu_the_node_does_not_have_is_refused_naming_the_key():
    before = os.sched_getaffinity(0)
    with pytest.raises(ValueError, match=r"generation\.cpus: CPU ids \[4096\] are not available"):
        pin_process([4096], "generation.cpus")
    assert os.sched_getaffinity(0) == before


def test_no_cpus_leaves_the_process_alone():
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pin_process([], "reward.cpus")
    if before is not None:
        assert os.sched_getaffinity(0) == before

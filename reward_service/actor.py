"""`ScorerActor`: a Ray actor hosting one `RewardScorer` (frozen RM, reference policy, functions)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Sequence

import ray

from raylhf.contracts.records import Rollout


def torch_threads_for(num_cpus: float) -> int:
    """torch intra-op threads matching the actor's CPU reservation, so actors do not oversubscribe cores."""
    return max(1, round(num_cpus))


@ray.remote(max_restarts=0, max_task_retries=0)
class ScorerActor:
    """Scores batches of rollouts; one request at a time, in submission order.

    Args:
        name: label used in errors and logs.
        num_threads: torch intra-op threads (the pool passes its `num_cpus`, rounded, at least 1).
        scorer_kwargs: keyword arguments of `RewardScorer` (paths, sources, dtype, device, ...).
    The actor does not restart itself: `RewardPool` replaces a dead or hung one and resubmits its work.
    """

    def __init__(self, name: str, num_threads: int, scorer_kwargs: dict[str, Any]):
        import torch
        from transformers.utils import logging as hf_logging

        from raylhf.reward_service.scorer import RewardScorer

        torch.set_num_threads(num_threads)
        hf_logging.disable_progress_bar()
        self.name = name
        self.scorer = RewardScorer(**scorer_kwargs)
        self.requests = 0

    def ready(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), **self.scorer.describe()}

    def score(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        self.requests += 1
        return self.scorer.score(rollouts)

    def debug_sleep(self, seconds: float) -> None:
        """Occupy the actor for `seconds` (fault-injection for timeout tests: later requests queue behind it)."""
        time.sleep(seconds)

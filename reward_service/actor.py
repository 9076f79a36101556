"""`ScorerActor`: a Ray actor hosting one `RewardScorer` (frozen RM, reference policy, functions)."""

from __future__ import annotations

import os
import socket
import time
from typing import Sequence

import ray
import torch

from raylhf.configs.schema import RewardConfig
from raylhf.contracts.affinity import current_cpus, pin_process
from raylhf.contracts.model_files import ModelFiles, local_dir
from raylhf.contracts.protocols import ActorInfo
from raylhf.contracts.records import Rollout
from raylhf.reward_service.rejects import Reject
from raylhf.reward_service.scorer import RewardScorer


def torch_threads_for(num_cpus: float) -> int:
    """torch intra-op threads matching the actor's CPU reservation, so actors do not oversubscribe cores."""
    return max(1, round(num_cpus))


@ray.remote(max_restarts=0, max_task_retries=0)
class ScorerActor:
    """Scores batches of rollouts; one request at a time, in submission order.

    Args:
        name: label used in errors and logs.
        cfg: the reward section; `num_cpus` sets the torch thread count (rounded, at least 1) and
            `num_gpus > 0` puts the models on CUDA.
        rm_path, ref_path, trust_remote_code: as for `RewardScorer` (checkpoints used where `cfg`
            leaves them unset).
    The scores are raw: normalisation and clipping are the pool's, applied once in the driver. Rollouts
    that cannot be scored come back as `Reject`s, beside the scored ones; the pool quarantines them.
    The actor does not restart itself: `RewardPool` replaces a dead or hung one and resubmits its work.
    """

    def __init__(
        self, name: str, cfg: RewardConfig, *, rm_path: str | ModelFiles | None, ref_path: str | ModelFiles | None,
        trust_remote_code: bool
    ):
        # deferred: transformers takes seconds to import, and the driver imports this module (the pool)
        from transformers.utils import logging as hf_logging

        pin_process(cfg.cpus, "reward.cpus")  # before torch starts its threads
        torch.set_num_threads(torch_threads_for(cfg.num_cpus))
        hf_logging.disable_progress_bar()
        self.name = name
        self.scorer = RewardScorer(
            cfg,
            rm_path=local_dir(rm_path),  # on another node than the driver: the files, unpacked here
            ref_path=local_dir(ref_path),
            trust_remote_code=trust_remote_code,
            device="cuda" if cfg.num_gpus > 0 else "cpu",
            apply_transform=False,
        )
        self.requests = 0

    def ready(self) -> ActorInfo:
        return ActorInfo(self.name, os.getpid(), ray.get_runtime_context().get_node_id(), current_cpus(),
                         socket.gethostname(), self.scorer.describe())

    def score(self, rollouts: Sequence[Rollout]) -> tuple[list[Rollout], list[Reject]]:
        """(scored rollouts in request order, quarantined rollouts): `RewardScorer.score_with_rejects`."""
        self.requests += 1
        return self.scorer.score_with_rejects(rollouts)

    def debug_sleep(self, seconds: float) -> None:
        """Occupy the actor for `seconds` (fault-injection for timeout tests: later requests queue behind it)."""
        time.sleep(seconds)

"""`PPOLearnerActor`: the Ray actor hosting one `PPOLearner` (the only Ray-aware part of the learner)."""

from __future__ import annotations

import collections
import os
import socket
from typing import TYPE_CHECKING, Any, Sequence

import ray

from raylhf.contracts.records import Rollout

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.configs.schema import PPOConfig

# Snapshot refs the actor keeps alive: the newest (generators are loading it) and the one before (a
# generator may still be fetching it). Older snapshots live only as long as someone else holds their ref.
KEEP_SNAPSHOTS = 2


@ray.remote(max_restarts=0, max_task_retries=0)
class PPOLearnerActor:
    """One learner; calls run one at a time, in submission order.

    Args:
        cfg, policy_path, value_path: as for `raylhf.learners.ppo.PPOLearner`.
        name: label used in errors and logs.
        run_values: the run-level keyword arguments of `PPOLearner` (pretrain_stream, seed, device, bf16,
            snapshot_dtype, torch_threads, trust_remote_code); pass `torch_threads` matching the actor's
            `num_cpus` so it does not oversubscribe the cores.

    Reserve resources with `.options(num_cpus=..., num_gpus=...)`. The actor does not restart itself:
    its weights live only here, so a crash surfaces in the driver (which resumes from a checkpoint).
    """

    def __init__(self, cfg: PPOConfig, policy_path: str, value_path: str, *, name: str = "learner",
                 **run_values: Any):
        from raylhf.learners.ppo import PPOLearner

        self.name = name
        self.learner = PPOLearner(cfg, policy_path, value_path, **run_values)
        self._published: collections.deque = collections.deque(maxlen=KEEP_SNAPSHOTS)

    def ready(self) -> dict[str, Any]:
        """Where the actor runs and what it holds; returns once the models are loaded."""
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), **self.learner.describe()}

    def version(self) -> int:
        return self.learner.version

    def train_step(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        return self.learner.train_step(rollouts)

    def publish(self, advance: bool = True) -> tuple[int, ray.ObjectRef]:
        """Advance the version (unless `advance` is False), put the policy's weight snapshot in the object
        store once, and return ``(version, ref)``; generators `ray.get` the ref (zero-copy numpy buffers)."""
        version, snapshot = self.learner.publish(advance)
        ref = ray.put(snapshot)
        self._published.append(ref)
        return version, ref

    def logprobs(self, rollouts: Sequence[Rollout]) -> list[list[float]]:
        return self.learner.logprobs(rollouts)

    def save_checkpoint(self, path: str) -> None:
        self.learner.save_checkpoint(path)

    def load_checkpoint(self, path: str) -> int:
        """Restore a checkpoint; returns the restored version."""
        self.learner.load_checkpoint(path)
        return self.learner.version

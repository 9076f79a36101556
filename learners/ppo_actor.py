"""`PPOLearnerActor`: the Ray actor hosting one `PPOLearner` (the only Ray-aware part of the learner)."""

from __future__ import annotations

import collections
import os
import socket
import tempfile
from typing import TYPE_CHECKING, Any, Sequence

import ray

from raylhf.contracts.affinity import current_cpus, pin_process
from raylhf.contracts.model_files import ModelFiles, PackedDir, local_dir, pack_dir
from raylhf.contracts.protocols import ActorInfo
from raylhf.contracts.records import Rollout
from raylhf.learners.ppo import PPOLearner

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

    def __init__(self, cfg: PPOConfig, policy_path: str | ModelFiles, value_path: str | ModelFiles, *,
                 name: str = "learner", **run_values: Any):
        pin_process(cfg.cpus, "ppo.cpus")  # before torch starts its threads
        self.name = name
        self.learner = PPOLearner(cfg, local_dir(policy_path), local_dir(value_path), **run_values)
        self._published: collections.deque = collections.deque(maxlen=KEEP_SNAPSHOTS)

    def ready(self) -> ActorInfo:
        """Where the actor runs and what it holds; returns once the models are loaded."""
        return ActorInfo(self.name, os.getpid(), ray.get_runtime_context().get_node_id(), current_cpus(),
                         socket.gethostname(), self.learner.describe())

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

    def save_checkpoint(self, path: str, driver_node_id: str | None = None) -> PackedDir | None:
        """Write a checkpoint to `path` when this actor runs on the driver's node `driver_node_id` (or
        it is None); on another node, where that path is not the driver's, return its files instead
        (through the object store) for the driver to write."""
        if driver_node_id is None or driver_node_id == ray.get_runtime_context().get_node_id():
            self.learner.save_checkpoint(path)
            return None
        with tempfile.TemporaryDirectory(prefix="raylhf-ckpt-") as tmp:
            self.learner.save_checkpoint(tmp)
            return pack_dir(tmp)

    def load_checkpoint(self, path: str | ModelFiles) -> int:
        """Restore a checkpoint (a path, or the driver's `ModelFiles` of one); returns the restored version."""
        self.learner.load_checkpoint(local_dir(path))
        return self.learner.version

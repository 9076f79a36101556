"""`PPOCheckpoint`: the PPO stage's checkpoint in `<run>/checkpoints/ppo` — save, latest, resumable, restore.

A checkpoint is the learner's own (`policy/`, `value/`, optimiser, KL-controller, version and RNG state)
plus the driver's state (`driver_state.json`: step and prompt cursor), written last, so its presence
marks a complete checkpoint. A new checkpoint is written beside the previous one and swapped in whole:
a crash at any point leaves a complete checkpoint to resume from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from raylhf.contracts import remote
from raylhf.contracts.remote import NamedActor
from raylhf.orchestration.cursor import PromptCursor

DRIVER_STATE = "driver_state.json"


class PPOCheckpoint:
    """The newest PPO checkpoint of a run directory."""

    def __init__(self, run_root: str | Path):
        self.dir = Path(run_root) / "checkpoints" / "ppo"
        self._tmp = self.dir.with_name("ppo.tmp")
        self._old = self.dir.with_name("ppo.old")

    def latest(self) -> Path | None:
        """The newest complete checkpoint (one interrupted mid-swap included), or None."""
        for candidate in (self.dir, self._tmp, self._old):
            if (candidate / DRIVER_STATE).exists():
                return candidate
        return None

    def driver_state(self) -> dict[str, Any] | None:
        latest = self.latest()
        return None if latest is None else json.loads((latest / DRIVER_STATE).read_text())

    def step(self) -> int | None:
        """The learner step of the newest checkpoint, or None."""
        state = self.driver_state()
        return None if state is None else int(state["steps"])

    def resumable(self, total_steps: int) -> bool:
        """Whether there is a checkpoint short of `total_steps` (an interrupted PPO stage)."""
        step = self.step()
        return step is not None and step < total_steps

    def save(self, learner: NamedActor, cursor: PromptCursor, step: int, timeout_s: float) -> None:
        """Checkpoint the learner and the prompt cursor, swapped in whole."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        remote.get(learner.handle.save_checkpoint.remote(str(self._tmp)), actor=learner.name,
                   what="save_checkpoint", timeout_s=timeout_s)
        (self._tmp / DRIVER_STATE).write_text(json.dumps({"steps": step, "cursor": cursor.state_dict()}))  # last
        shutil.rmtree(self._old, ignore_errors=True)
        if self.dir.exists():
            self.dir.rename(self._old)
        self._tmp.rename(self.dir)
        shutil.rmtree(self._old, ignore_errors=True)

    def restore(self, learner: NamedActor, cursor: PromptCursor, timeout_s: float) -> tuple[int, int]:
        """Load the newest checkpoint into the learner and the cursor; returns ``(step, policy version)``."""
        latest = self.latest()
        if latest is None:
            raise FileNotFoundError(f"nothing to resume: no PPO checkpoint under {self.dir.parent}")
        state = json.loads((latest / DRIVER_STATE).read_text())
        version = remote.get(learner.handle.load_checkpoint.remote(str(latest)), actor=learner.name,
                             what="load_checkpoint", timeout_s=timeout_s)
        cursor.load_state_dict(state["cursor"])
        return int(state["steps"]), int(version)

    @property
    def policy_dir(self) -> Path:
        """The HF policy checkpoint inside the newest complete checkpoint."""
        latest = self.latest()
        if latest is None:
            raise FileNotFoundError(f"no PPO checkpoint under {self.dir.parent}")
        return latest / "policy"

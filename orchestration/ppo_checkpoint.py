"""`PPOCheckpoint`: the PPO stage's checkpoint in `<run>/checkpoints/ppo` — save, latest, resumable, restore.

A checkpoint is the learner's own (`policy/`, `value/`, optimiser, KL-controller, version and RNG state)
plus the driver's state (`driver_state.json`: step, prompt cursor with the prompts still in flight,
sample ledger, reward normaliser), written last, so its presence marks a complete checkpoint.

The learner writes into the run directory itself when it runs on the driver's node; from another node its
files come back through the object store and the driver writes them (and sends them on restore), so the
run directory never has to be shared between nodes.

A new checkpoint is written to `ppo.tmp`, fsynced, and swapped in (`ppo` -> `ppo.old`, `ppo.tmp` ->
`ppo`, then `ppo.old` removed). A crash at any point leaves a complete checkpoint: before the swap the
previous one is untouched; during it, `latest()` finds whichever of the three is complete, newest first,
and the next save first settles the directory so that the only complete checkpoint is never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from raylhf.contracts import remote
from raylhf.contracts.dataio import fsync_dir
from raylhf.contracts.model_files import share_dir, unpack_into
from raylhf.contracts.remote import NamedActor

DRIVER_STATE = "driver_state.json"


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root`, and the directories, to stable storage."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))



class PPOCheckpoint:
    """The newest PPO checkpoint of a run directory."""

    def __init__(self, run_root: str | Path, on_saved: Callable[[], None] = lambda: None):
        self.dir = Path(run_root) / "checkpoints" / "ppo"
        self.on_saved = on_saved  # e.g. mirror the run to its storage URI
        self._tmp = self.dir.with_name("ppo.tmp")
        self._old = self.dir.with_name("ppo.old")

    @staticmethod
    def _complete(path: Path) -> bool:
        return (path / DRIVER_STATE).exists()

    def latest(self) -> Path | None:
        """The newest complete checkpoint (one interrupted mid-swap included), or None."""
        for candidate in (self.dir, self._tmp, self._old):
            if self._complete(candidate):
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

    def _settle(self) -> None:
        """Finish a swap a crash interrupted, so that `ppo` is the newest complete checkpoint (if any) and
        nothing else complete is left that a save might delete."""
        if not self._complete(self.dir) and self._complete(self._tmp):
            shutil.rmtree(self.dir, ignore_errors=True)
            self._tmp.rename(self.dir)
        if not self._complete(self.dir) and self._complete(self._old):
            shutil.rmtree(self.dir, ignore_errors=True)
            self._old.rename(self.dir)
        if self._complete(self.dir):
            shutil.rmtree(self._old, ignore_errors=True)
            shutil.rmtree(self._tmp, ignore_errors=True)

    def save(self, learner: NamedActor, step: int, driver_state: dict[str, Any], timeout_s: float) -> None:
        """Checkpoint the learner and the driver's state at `step`, swapped in whole."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self._settle()
        shutil.rmtree(self._tmp, ignore_errors=True)
        files = remote.get(learner.handle.save_checkpoint.remote(str(self._tmp), remote.node_id()),
                           actor=learner.name, what="save_checkpoint", timeout_s=timeout_s)
        if files is not None:  # a learner on another node sent its files through the object store
            unpack_into(files, self._tmp)
        (self._tmp / DRIVER_STATE).write_text(json.dumps({"steps": step, **driver_state}))  # last: marks complete
        _fsync_tree(self._tmp)
        if self.dir.exists():
            self.dir.rename(self._old)
        self._tmp.rename(self.dir)
        fsync_dir(self.dir.parent)
        shutil.rmtree(self._old, ignore_errors=True)
        self.on_saved()

    def restore(self, learner: NamedActor, timeout_s: float) -> tuple[int, int, dict[str, Any]]:
        """Load the newest checkpoint into the learner; returns ``(step, policy version, driver state)``."""
        self._settle()
        latest = self.latest()
        if latest is None:
            raise FileNotFoundError(f"nothing to resume: no PPO checkpoint under {self.dir.parent}")
        state = json.loads((latest / DRIVER_STATE).read_text())
        version = remote.get(learner.handle.load_checkpoint.remote(share_dir(latest)), actor=learner.name,
                             what="load_checkpoint", timeout_s=timeout_s)
        return int(state.pop("steps")), int(version), state

    def clear(self) -> None:
        """Delete every checkpoint of the stage (a fresh start)."""
        for path in (self.dir, self._tmp, self._old):
            shutil.rmtree(path, ignore_errors=True)

    @property
    def policy_dir(self) -> Path:
        """The HF policy checkpoint inside the newest complete checkpoint."""
        latest = self.latest()
        if latest is None:
            raise FileNotFoundError(f"no PPO checkpoint under {self.dir.parent}")
        return latest / "policy"

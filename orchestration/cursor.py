"""`PromptCursor`: the PPO stage's position in its prompt set, and `Draw`, one prompt taken from it.

Each pass over the prompts (an epoch) has its own seeded order and its own sampling seed, so a prompt
seen again in a later epoch gets fresh sampling noise, while a run resumed from a checkpoint draws
exactly what the uninterrupted run would have drawn. Prompts that were taken but not trained on when a
checkpoint was written are handed out again first after a restore (`reissue`).
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from raylhf.contracts.records import Prompt


@dataclass(frozen=True)
class Draw:
    """One prompt taken from the cursor: the prompt and the epoch it belongs to (which seeds its sampling)."""

    prompt: Prompt
    epoch: int

    @property
    def key(self) -> tuple[str, int]:
        return self.prompt.prompt_id, self.epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """The sampling seed of one epoch: `seed` itself in epoch 0, a stable hash of (seed, epoch) after it."""
    if epoch == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/epoch/{epoch}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class PromptCursor:
    """Cycles through the prompts in a fresh seeded order each epoch; state: epoch, position, reissues."""

    def __init__(self, prompts: Sequence[Prompt], seed: int):
        if not prompts:
            raise ValueError("no prompts to train on")
        self.prompts, self.seed = list(prompts), seed
        self._by_id = {p.prompt_id: p for p in self.prompts}
        self.epoch, self.position = 0, 0
        self._order = self._permutation()
        self._reissue: collections.deque[Draw] = collections.deque()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))

    def take(self, n: int) -> list[Draw]:
        """The next `n` draws: prompts to reissue first, then the current epoch's order."""
        out = []
        while len(out) < n and self._reissue:
            out.append(self._reissue.popleft())
        while len(out) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(Draw(self.prompts[self._order[self.position]], self.epoch))
            self.position += 1
        return out

    @property
    def pending_reissues(self) -> int:
        return len(self._reissue)

    def reissues(self) -> list[Draw]:
        """The draws handed out again before the epoch order continues."""
        return list(self._reissue)

    def state_dict(self, outstanding: Sequence[Draw] = ()) -> dict[str, Any]:
        """The cursor's state; `outstanding` draws (taken, not yet trained on) are handed out again first
        after `load_state_dict`."""
        reissue = [*self._reissue, *outstanding]
        return {"epoch": self.epoch, "position": self.position,
                "reissue": [[d.prompt.prompt_id, d.epoch] for d in reissue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()
        missing = [pid for pid, _ in state.get("reissue", []) if pid not in self._by_id]
        if missing:
            raise ValueError(f"the checkpoint reissues prompts this prompt set does not have: {missing[:5]}")
        self._reissue = collections.deque(Draw(self._by_id[pid], epoch) for pid, epoch in state.get("reissue", []))

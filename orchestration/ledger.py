"""`SampleLedger`: where every sampled rollout of the PPO stage went, so the run's accounting adds up.

Each prompt taken from the cursor is a draw of `n` rollout slots (`generation.n` samples). A slot ends in
exactly one outcome::

    refused        the generator refused the prompt (too long, empty)
    rejected       the reward service quarantined the rollout (NaN score, token out of vocabulary)
    trained        the learner trained on it
    dropped_stale  it was older than `ppo.max_staleness` versions when its batch reached the learner

and until then it is in the system (generating, scoring or buffered). The invariant, checked by
`balance()`::

    taken × n == refused × n + rejected + trained + dropped_stale + in_system

A generator that is replaced resubmits its prompts (they are not taken again; `GeneratorSet` counts them). A
checkpoint stores the ledger as if its open draws had not started (`state_dict`), and the restored
cursor hands those draws out again (`reissued`); so after a restore, in the same process or a new one,
the ledger describes exactly the lineage of the restored learner.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from raylhf.contracts.records import Rollout
from raylhf.orchestration.cursor import Draw

OUTCOMES = ("rejected", "trained", "dropped_stale")
COUNTERS = ("taken", "refused", *OUTCOMES, "reissued")


@dataclass
class _Open:
    draw: Draw
    pending: int
    resolved: collections.Counter = field(default_factory=collections.Counter)


class SampleLedger:
    def __init__(self, samples_per_prompt: int):
        self.n = samples_per_prompt
        self.counts: collections.Counter = collections.Counter({k: 0 for k in COUNTERS})
        self._open: dict[tuple[str, int], _Open] = {}
        self._draw_of: dict[str, tuple[str, int]] = {}  # sample_id -> draw key
        self._reissue: set[tuple[str, int]] = set()  # open draws the restored cursor hands out again

    # -- events ---------------------------------------------------------------------------------------
    def taken(self, draws: Iterable[Draw]) -> None:
        """Draws handed out by the cursor; a draw already open was reissued after a restore."""
        for d in draws:
            if d.key in self._reissue:  # opened by `load_state_dict`, handed out now
                self._reissue.discard(d.key)
                self.counts["reissued"] += 1
                continue
            self._open[d.key] = _Open(d, self.n)
            self.counts["taken"] += 1

    def generated(self, draw: Draw, result: list[Rollout] | None) -> None:
        """The generator answered a draw: its rollouts (None: refused)."""
        if result is None:
            self._open.pop(draw.key, None)
            self.counts["refused"] += 1
            return
        for r in result:
            self._draw_of[r.sample_id] = draw.key

    def resolve(self, rollouts: Sequence[Rollout], outcome: str) -> None:
        for r in rollouts:
            key = self._draw_of.pop(r.sample_id, None)
            if key is None or key not in self._open:
                continue
            entry = self._open[key]
            entry.pending -= 1
            entry.resolved[outcome] += 1
            self.counts[outcome] += 1
            if entry.pending <= 0:
                del self._open[key]

    def rejected_among(self, sent: Sequence[Rollout], returned: Sequence[Rollout]) -> list[Rollout]:
        """Resolve as rejected the rollouts sent for scoring that did not come back; returns them."""
        back = {r.sample_id for r in returned}
        lost = [r for r in sent if r.sample_id not in back]
        self.resolve(lost, "rejected")
        return lost

    # -- views ----------------------------------------------------------------------------------------
    def open_draws(self) -> list[Draw]:
        """Draws with at least one slot still in the system, oldest first."""
        return [e.draw for e in self._open.values()]

    @property
    def in_system(self) -> int:
        return sum(e.pending for e in self._open.values())

    def balance(self) -> dict[str, Any]:
        """The invariant's two sides; `ok` when they agree."""
        c = self.counts
        taken = c["taken"] * self.n
        accounted = c["refused"] * self.n + sum(c[k] for k in OUTCOMES) + self.in_system
        return {"taken_slots": taken, "accounted_slots": accounted, "in_system": self.in_system,
                "ok": taken == accounted}

    def summary(self) -> dict[str, int]:
        return {f"samples_{k}": int(v) for k, v in self.counts.items()}

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Counters as if the open draws had not started (the restored cursor reissues them)."""
        counts = collections.Counter(self.counts)
        for e in self._open.values():
            counts.subtract(e.resolved)
        return {k: int(counts[k]) for k in COUNTERS}

    def load_state_dict(self, state: dict[str, int], reissued: Sequence[Draw]) -> None:
        """Restore the counters; `reissued` draws (the cursor's, handed out next) are open again."""
        self.counts = collections.Counter({k: int(state.get(k, 0)) for k in COUNTERS})
        self._open, self._draw_of = {}, {}
        self._reissue = {d.key for d in reissued}
        for d in reissued:
            self._open[d.key] = _Open(d, self.n)

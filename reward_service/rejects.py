"""Quarantine of rollouts that cannot be scored: `Reject` records, the rejects file and the reject-rate limit.

A rollout that cannot be scored is a data fault of that rollout, not of the run: it is left out of the
scored results (never given a made-up reward), counted by cause and written to the rejects file. The
run stops only when the share of quarantined rollouts passes `reward.max_reject_rate`.

Causes (`Reject.cause`):
  - `empty_sequence`: no prompt or no response tokens (the reward is read at the last response token),
  - `too_long`: prompt + response longer than a model's position limit,
  - `token_out_of_vocab`: a prompt or response token id outside a model's vocabulary (or negative),
    found before the forward pass, where it would fail the embedding lookup of the whole micro-batch,
  - `nonfinite_rm_score`: the reward model returned NaN or inf,
  - `nonfinite_ref_logprobs`: a reference-policy logprob is NaN or inf,
  - `nonfinite_function_reward`: a programmatic reward function returned NaN or inf for the rollout,
  - `nonfinite_reward`: the weighted sum of the sources, or its normalised value, is not finite.

The rejects file is JSON Lines, one object per quarantined rollout, appended to:
  {"sample_id": str, "prompt_id": str, "policy_version": int, "prompt_ids": [int], "response_ids": [int],
   "cause": str, "detail": str, "time": float}
`cause` is one of the codes above, `detail` says what was found (which id, which model, which value),
`time` is when it was quarantined (unix seconds).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Sequence

from raylhf.contracts.records import Rollout

log = logging.getLogger(__name__)

EMPTY_SEQUENCE = "empty_sequence"
TOO_LONG = "too_long"
TOKEN_OUT_OF_VOCAB = "token_out_of_vocab"
NONFINITE_RM_SCORE = "nonfinite_rm_score"
NONFINITE_REF_LOGPROBS = "nonfinite_ref_logprobs"
NONFINITE_FUNCTION_REWARD = "nonfinite_function_reward"
NONFINITE_REWARD = "nonfinite_reward"
CAUSES = (
    EMPTY_SEQUENCE,
    TOO_LONG,
    TOKEN_OUT_OF_VOCAB,
    NONFINITE_RM_SCORE,
    NONFINITE_REF_LOGPROBS,
    NONFINITE_FUNCTION_REWARD,
    NONFINITE_REWARD,
)


@dataclass(frozen=True)
class Reject:
    """One quarantined rollout: what it was and why it could not be scored (a row of the rejects file)."""

    sample_id: str
    prompt_id: str
    policy_version: int
    prompt_ids: list[int]  # [P]
    response_ids: list[int]  # [T]
    cause: str  # one of CAUSES
    detail: str
    time: float  # unix time it was quarantined

    @classmethod
    def of(cls, rollout: Rollout, cause: str, detail: str) -> "Reject":
        if cause not in CAUSES:
            raise ValueError(f"unknown reject cause {cause!r}; expected one of {CAUSES}")
        return cls(
            sample_id=rollout.sample_id,
            prompt_id=rollout.prompt_id,
            policy_version=int(rollout.policy_version),
            prompt_ids=[int(t) for t in rollout.prompt_ids],
            response_ids=[int(t) for t in rollout.response_ids],
            cause=cause,
            detail=detail,
            time=time.time(),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), allow_nan=False)


class RejectLog:
    """Counts quarantined rollouts by cause, appends them to the rejects file and checks the reject rate.

    Args:
        path: the JSON Lines rejects file, appended to (created with its folder at construction, so an
            unwritable path fails before any scoring); None: rejects are only counted and logged.
        max_rate: `reward.max_reject_rate`, the share of seen rollouts that may be quarantined.
        min_rollouts: `reward.reject_rate_min_rollouts`, rollouts seen before the rate is enforced.
    "Seen" counts every rollout that finished scoring: delivered with a score, or quarantined.
    """

    def __init__(self, path: str | os.PathLike | None, *, max_rate: float, min_rollouts: int):
        self.path = None if path is None else Path(path)
        self.max_rate, self.min_rollouts = max_rate, min_rollouts
        self.scored = 0
        self.by_cause: Counter[str] = Counter()
        self._file: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    @property
    def rejected(self) -> int:
        return sum(self.by_cause.values())

    @property
    def seen(self) -> int:
        return self.scored + self.rejected

    @property
    def rate(self) -> float:
        return self.rejected / self.seen if self.seen else 0.0

    def record(self, rejects: Sequence[Reject], *, scored: int, where: str = "") -> None:
        """Count one finished batch: `scored` rollouts delivered and `rejects` quarantined."""
        self.scored += scored
        for r in rejects:
            self.by_cause[r.cause] += 1
            log.warning("quarantined rollout %s%s: %s: %s", r.sample_id, f" ({where})" if where else "", r.cause,
                        r.detail)
        if rejects and self._file is not None:
            self._file.write("".join(r.to_json() + "\n" for r in rejects))
            self._file.flush()

    def over_limit(self) -> str | None:
        """Why the run must stop (the rate, the limit, the key, the file), or None while within the limit."""
        if self.seen < self.min_rollouts or self.rate <= self.max_rate:
            return None
        causes = ", ".join(f"{c} {n}" for c, n in self.by_cause.most_common())
        where = f"rejects in {self.path}" if self.path is not None else "no rejects file configured"
        return (
            f"reward.max_reject_rate exceeded: {self.rejected} of {self.seen} rollouts quarantined "
            f"(reject rate {self.rate:.4f} > limit {self.max_rate:g}; checked from "
            f"reward.reject_rate_min_rollouts={self.min_rollouts} rollouts on); causes: {causes}; {where}"
        )

    def stats(self) -> dict[str, Any]:
        return {
            "rejected": self.rejected,
            "rejected_by_cause": dict(self.by_cause),
            "reject_rate": self.rate,
            "rejects_path": None if self.path is None else str(self.path),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "by_cause": dict(self.by_cause)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scored = int(state["scored"])
        self.by_cause = Counter({str(c): int(n) for c, n in state["by_cause"].items()})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

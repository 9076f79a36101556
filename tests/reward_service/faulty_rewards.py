"""A token reward function with faults on cue, for quarantine and failure tests.

Scorer actors import it as `tests.reward_service.faulty_rewards`: Ray puts the driver's working
directory (the repository root, where `make test` runs pytest) on its workers' path.
"""

from __future__ import annotations

from typing import Sequence

SOURCE = "tests.reward_service.faulty_rewards:faulty"
NAN_MARKER = (11, 12, 13, 14)  # a response starting with these gets a NaN reward
RAISE_MARKER = (14, 13, 12, 11)  # a response starting with these makes the whole call raise


def faulty(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> list[float]:
    """0.0 per rollout, NaN for a response that starts with `NAN_MARKER`; raises `ValueError` when any
    response starts with `RAISE_MARKER`."""
    out = []
    for r in response_ids:
        head = tuple(r[: len(NAN_MARKER)])
        if head == RAISE_MARKER:
            raise ValueError("cannot score a response that starts with RAISE_MARKER")
        out.append(float("nan") if head == NAN_MARKER else 0.0)
    return out


def nan_every(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], every: int = 4
              ) -> list[float]:
    """0.0 per rollout, NaN for about one in `every` (those whose response token ids sum to a multiple of it)."""
    return [float("nan") if sum(r) % every == 0 else 0.0 for r in response_ids]

"""The simulated labeler: `SimulatedLabeler`, and `hash_unit`, the stable hash its noise (and the
held-out split of the prompt space) is drawn from.

A labeler of seed s scores a response as `utility + labeler_noise * z`, with z ~ N(0, 1) drawn
from a hash of (s, prompt, response): a Thurstone-style labeler whose rankings are transitive and
who gives the same judgement when asked twice. Two labelers are independent when their seeds
differ. Ties: identical responses get identical scores, so `prefer` returns 0.5 and `rank` keeps
them in input order next to each other; different responses of equal utility are separated by the
noise (with `labeler_noise = 0` they tie: `prefer` returns 0.5 and `rank` keeps input order).
The noise level is calibrated in `raylhf.tasks.demo.calibration`.
"""

from __future__ import annotations

import hashlib
from statistics import NormalDist
from typing import Sequence

from raylhf.tasks.demo.utility import judge

_STD_NORMAL = NormalDist()


def hash_unit(*parts: object) -> float:
    """A uniform number in (0, 1) from a stable hash of the parts."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(h, "big") + 0.5) / 2.0**64


class SimulatedLabeler:
    """Utility plus per-(labeler, prompt, response) Gaussian noise; see the module docstring."""

    def __init__(self, seed: int, noise: float):
        self.seed = seed
        self.noise = noise

    def score(self, prompt: str, response: str) -> float:
        u = judge(prompt, response).utility
        if self.noise == 0:
            return u
        return u + self.noise * _STD_NORMAL.inv_cdf(hash_unit("labeler", self.seed, prompt, response))

    def rank(self, prompt: str, responses: Sequence[str]) -> list[int]:
        scores = [self.score(prompt, r) for r in responses]
        return sorted(range(len(responses)), key=lambda i: (-scores[i], i))

    def prefer(self, prompt: str, a: str, b: str) -> float:
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        return 1.0 if sa > sb else 0.0 if sa < sb else 0.5

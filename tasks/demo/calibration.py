"""Calibration of the simulated labeler's noise on a fixed reference set.

Holds `reference_pairs` (the reference set: pairs of two different demonstrator responses to the
same training-distribution prompt), `labeler_agreement` (how often two labelers agree on it, and a
labeler with the noiseless utility), `expected_agreement` (the same in expectation over the noise)
and `calibrate_labeler_noise` (the noise at which two labelers agree on a target share, by default
~73 % as in InstructGPT: 72.6 +- 1.5 %).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from raylhf.tasks.demo.prompts import format_prompt
from raylhf.tasks.demo.utility import judge

if TYPE_CHECKING:
    from raylhf.tasks.demo.world import DemoWorld


def reference_pairs(world: DemoWorld, n_pairs: int) -> list[tuple[str, str, str]]:
    """The fixed calibration set: (prompt, a, b) with a != b, two demonstrator responses to one
    training-distribution prompt. A function of the world's seed only (not of any labeler)."""

    def make() -> list[tuple[str, str, str]]:
        rng = random.Random(f"demo-world/{world.config.seed}/reference")
        pairs: list[tuple[str, str, str]] = []
        while len(pairs) < n_pairs:
            prompt = format_prompt(world.train_instruction(rng))
            a, _ = world.demonstrate(prompt, rng)
            for _ in range(20):
                b, _ = world.demonstrate(prompt, rng)
                if b != a:
                    pairs.append((prompt, a, b))
                    break
        return pairs

    return world.memo(("reference", n_pairs), make)


def _agree(x: float, y: float) -> float:
    """1 when two verdicts match, 0 when opposite, 0.5 when one of them is a tie."""
    return 1.0 - abs(x - y)


def labeler_agreement(world: DemoWorld, n_pairs: int = 8000, seed: int = 0, noise: float | None = None) -> dict:
    """Agreement of two independent labelers (seeds `seed`, `seed + 1`) with each other and of the
    first with the noiseless utility, on the fixed reference set."""
    la, lb = world.labeler(seed, noise), world.labeler(seed + 1, noise)
    ll = lu = 0.0
    pairs = reference_pairs(world, n_pairs)
    for prompt, a, b in pairs:
        pa, pb = la.prefer(prompt, a, b), lb.prefer(prompt, a, b)
        ua, ub = judge(prompt, a).utility, judge(prompt, b).utility
        pu = 1.0 if ua > ub else 0.0 if ua < ub else 0.5
        ll += _agree(pa, pb)
        lu += _agree(pa, pu)
    return {
        "labeler_labeler": ll / len(pairs),
        "labeler_utility": lu / len(pairs),
        "noise": la.noise,
        "n_pairs": len(pairs),
    }


def expected_agreement(world: DemoWorld, noise: float, n_pairs: int = 8000) -> float:
    """Labeler-labeler agreement on the reference set in expectation over labeler noise."""
    if noise <= 0:
        return 1.0
    total = 0.0
    for d in _reference_gaps(world, n_pairs):
        # P(a labeler prefers a) = Φ(d / (noise·√2)) = ½(1 + erf(d / (2·noise)))
        p = 0.5 * (1.0 + math.erf(d / (2.0 * noise)))
        total += p * p + (1.0 - p) * (1.0 - p)
    return total / n_pairs


def _reference_gaps(world: DemoWorld, n_pairs: int) -> list[float]:
    """Utility differences of the reference pairs."""
    return [judge(p, a).utility - judge(p, b).utility for p, a, b in reference_pairs(world, n_pairs)]


def calibrate_labeler_noise(world: DemoWorld, target: float = 0.726, n_pairs: int = 8000) -> float:
    """The labeler noise at which two labelers agree on `target` of the reference pairs (bisection)."""
    gaps = _reference_gaps(world, n_pairs)

    def agreement(noise: float) -> float:
        ps = [0.5 * (1.0 + math.erf(d / (2.0 * noise))) for d in gaps]
        return sum(p * p + (1.0 - p) * (1.0 - p) for p in ps) / len(ps)

    lo, hi = 1e-3, 10.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if agreement(mid) > target else (lo, mid)
    return math.sqrt(lo * hi)

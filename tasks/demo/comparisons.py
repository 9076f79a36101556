"""`demo_comparisons`: the seed comparisons of the demo task, rankings by a simulated labeler of
several different demonstrator responses to one training prompt (a first reward-model dataset
before any policy has been sampled).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from raylhf.contracts.records import Comparison

if TYPE_CHECKING:
    from raylhf.tasks.demo.world import DemoWorld


def demo_comparisons(world: DemoWorld, n: int, k: int = 4, seed: int = 0) -> list[Comparison]:
    """`n` comparisons of `k` different demonstrator responses to training prompts, ranked by the
    labeler of seed `seed`. Prompts whose demonstrator cannot produce 2 different responses are skipped;
    fewer than `k` are kept when it cannot produce `k`."""
    if not 2 <= k <= 9:
        raise ValueError(f"k must be in 2..9 (got {k})")
    rng = random.Random(f"demo-world/{world.config.seed}/comparisons/{seed}")
    labeler = world.labeler(seed)
    prompts = world.prompts("train")
    out: list[Comparison] = []
    order = list(range(len(prompts)))
    rng.shuffle(order)
    i = 0
    while len(out) < n and i < 4 * n + len(prompts):
        p = prompts[order[i % len(order)]]
        i += 1
        responses: list[str] = []
        for _ in range(20 * k):
            r, _ = world.demonstrate(p.prompt, rng)
            if r not in responses:
                responses.append(r)
                if len(responses) == k:
                    break
        if len(responses) < 2:
            continue
        out.append(Comparison(p.prompt_id, p.prompt, responses, labeler.rank(p.prompt, responses)))
    return out

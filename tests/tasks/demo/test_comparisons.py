"""Seed comparisons: rankings of different demonstrator responses by one labeler."""

from __future__ import annotations

import pytest

from raylhf.tasks import demo


def test_demo_comparisons(world):
    comps = demo.demo_comparisons(world, 60, k=4, seed=3)
    assert len(comps) == 60
    train_ids = {p.prompt_id: p.prompt for p in world.prompts("train")}
    lab = world.labeler(3)
    for c in comps:
        assert train_ids[c.prompt_id] == c.prompt
        assert 2 <= len(c.responses) <= 4 and len(set(c.responses)) == len(c.responses)
        assert sorted(c.ranking) == list(range(len(c.responses)))
        assert c.ranking == lab.rank(c.prompt, c.responses)
    assert sum(len(c.responses) == 4 for c in comps) > 0.9 * len(comps)
    with pytest.raises(ValueError):
        demo.demo_comparisons(world, 5, k=10)


def test_seed_comparisons_is_demo_comparisons(world):
    assert world.seed_comparisons(10, 3, 2) == demo.demo_comparisons(world, 10, k=3, seed=2)

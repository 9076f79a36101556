"""The simulated labeler: rankings, preferences, ties, consistency and its stable hash."""

from __future__ import annotations

import itertools

import pytest

from raylhf.contracts.protocols import Labeler
from raylhf.tasks.demo import SimulatedLabeler, format_prompt as P, hash_unit, judge


def test_labeler_rank_and_prefer(world):
    lab = world.labeler(7)
    assert isinstance(lab, Labeler)
    prompt = P("repeat the word dog 2 times")
    responses = [" dog dog", " dog", " dog dog . my friend has a cat", " dog dog", " cat cat", ""]
    order = lab.rank(prompt, responses)
    assert sorted(order) == list(range(len(responses)))
    # identical responses: a tie, kept next to each other in input order
    assert lab.prefer(prompt, " dog dog", " dog dog") == 0.5
    assert order.index(3) == order.index(0) + 1
    # rank and prefer agree, and a labeler is consistent when asked twice
    for i, j in itertools.combinations(range(len(responses)), 2):
        if responses[i] != responses[j]:
            assert lab.prefer(prompt, responses[i], responses[j]) == float(order.index(i) < order.index(j))
    assert lab.rank(prompt, responses) == order
    # labelers are noisy but mostly right about a big gap
    wins = sum(world.labeler(s).prefer(prompt, " dog dog", " cat cat") for s in range(200))
    assert wins > 190
    # noise-free labeler follows the utility exactly, ties stay ties
    exact = world.labeler(0, noise=0.0)
    assert exact.rank(prompt, [" cat cat", " dog dog", " dog"]) == [1, 2, 0]
    assert exact.prefer(P("list 2 fruits"), " apple pear", " plum lime") == 0.5


def test_score_is_utility_plus_seeded_noise():
    prompt, response = P("add 3 and 9"), " 12"
    u = judge(prompt, response).utility
    assert SimulatedLabeler(0, 0.0).score(prompt, response) == u
    a, b = SimulatedLabeler(0, 0.23), SimulatedLabeler(1, 0.23)
    assert a.score(prompt, response) == SimulatedLabeler(0, 0.23).score(prompt, response)
    assert a.score(prompt, response) != b.score(prompt, response)
    # the noise scales with the level: z is the same draw for the same (seed, prompt, response)
    z = (a.score(prompt, response) - u) / 0.23
    assert SimulatedLabeler(0, 0.5).score(prompt, response) - u == pytest.approx(0.5 * z)


def test_hash_unit_is_stable_and_in_the_open_unit_interval():
    draws = [hash_unit("x", i) for i in range(2000)]
    assert all(0.0 < d < 1.0 for d in draws)
    assert draws == [hash_unit("x", i) for i in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert hash_unit("a", "b") != hash_unit("a", "c")

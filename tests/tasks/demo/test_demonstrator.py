"""The demonstrator: its flaw rates, what each kind of response is worth, and rate validation."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from raylhf.configs.schema import TaskConfig
from raylhf.tasks import demo
from raylhf.tasks.demo import DemoWorld, Demonstrator, format_prompt


def test_demonstrator_flaw_rates(world):
    demos = world.demonstrations_with_kinds()
    assert len(demos) == len(world.prompts("train"))
    assert [d.prompt_id for d, _ in demos] == [p.prompt_id for p in world.prompts("train")]
    n = len(demos)
    kinds = Counter(k for _, k in demos)
    cfg = TaskConfig()
    for kind, rate in (("ramble", cfg.ramble_rate), ("verbose", cfg.verbose_rate), ("wrong", cfg.wrong_rate)):
        tol = 4 * (rate * (1 - rate) / n) ** 0.5  # 4 binomial standard deviations
        assert abs(kinds[kind] / n - rate) < tol, (kind, kinds[kind] / n, rate)
    # the kinds are what the utility sees
    for d, kind in demos:
        j = world.judge(d.prompt, d.response)
        assert d.response.startswith(" ")
        if kind == "good":
            assert j.utility == pytest.approx(1.25), d
        elif kind in ("ramble", "verbose"):
            assert j.exact and j.extra_words > 0 and j.utility < 1.25, d
        else:
            assert not j.exact, d
    # answers fit the 32-token budget: ideal <= 8 words, demonstrations <= ~30 words
    assert max(len(demo.response_words(world.ideal_response(d.prompt))) for d, _ in demos) <= 8
    assert max(len(d.response.split()) for d, _ in demos) <= 30


def test_demonstrator_respects_configured_rates():
    w = DemoWorld(TaskConfig(n_train_prompts=1000, ramble_rate=0.0, verbose_rate=0.0, wrong_rate=0.0))
    assert {k for _, k in w.demonstrations_with_kinds()} == {"good"}
    w = DemoWorld(TaskConfig(n_train_prompts=1000, ramble_rate=1.0, verbose_rate=0.0, wrong_rate=0.0))
    assert {k for _, k in w.demonstrations_with_kinds()} == {"ramble"}
    with pytest.raises(ValueError, match="must be <= 1"):
        DemoWorld(TaskConfig(ramble_rate=0.6, verbose_rate=0.3, wrong_rate=0.2))


@pytest.mark.parametrize("kind", demo.DEMO_KINDS)
def test_each_kind_on_request(kind):
    demonstrator = Demonstrator(TaskConfig())
    prompt = format_prompt("count from 4 to 8")
    response, got = demonstrator.demonstrate(prompt, random.Random(0), kind=kind)
    assert got == kind
    j = demo.judge(prompt, response)
    assert (j.utility == pytest.approx(1.25)) == (kind == "good")
    assert j.exact == (kind != "wrong")
    with pytest.raises(ValueError, match="unknown demonstration kind"):
        demonstrator.demonstrate(prompt, random.Random(0), kind="lazy")

"""The demo world: determinism, prompt splits, the generalization split and building from a config."""

from __future__ import annotations

import importlib
import itertools
import re
from collections import Counter

import pytest

from raylhf.configs.loader import ConfigError, load_config
from raylhf.configs.schema import TaskConfig
from raylhf.contracts.protocols import Task
from raylhf.tasks import demo, load_task
from raylhf.tasks.demo import CATEGORIES, DemoWorld


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_deterministic_for_a_seed():
    kw = dict(n_train_prompts=300, n_heldout_prompts=50, n_generalization_prompts=50, n_pretrain_docs=200)
    a, b = DemoWorld(TaskConfig(seed=3, **kw)), DemoWorld(TaskConfig(seed=3, **kw))
    c = DemoWorld(TaskConfig(seed=4, **kw))
    for split in demo.SPLITS:
        assert a.prompts(split) == b.prompts(split)
    assert a.demonstrations() == b.demonstrations()
    assert a.pretraining_corpus("train") == b.pretraining_corpus("train")
    assert a.pretraining_corpus("heldout") == b.pretraining_corpus("heldout")
    assert demo.reference_pairs(a, 100) == demo.reference_pairs(b, 100)
    assert demo.demo_comparisons(a, 20, 4, seed=1) == demo.demo_comparisons(b, 20, 4, seed=1)
    assert a.prompts("train") != c.prompts("train")
    assert a.demonstrations() != c.demonstrations()
    assert a.pretraining_corpus("train") != c.pretraining_corpus("train")


def test_datasets_are_copies_of_the_cached_ones():
    w = DemoWorld(TaskConfig(n_train_prompts=20, n_pretrain_docs=20))
    prompts = w.prompts("train")
    prompts.clear()
    assert len(w.prompts("train")) == 20
    assert w.memo("key", lambda: [1]) is w.memo("key", lambda: [2])


def test_prompt_ids_sizes_and_format(world):
    for split, n in (("train", 4000), ("heldout", 300), ("generalization", 300)):
        prompts = world.prompts(split)
        assert len(prompts) == n
        assert [p.prompt_id for p in prompts] == [f"{split}-{i:06d}" for i in range(n)]
        for p in prompts:
            # The bare instruction: the demo's chat template frames it ("Instruction: ...\nResponse:").
            assert "Instruction:" not in p.prompt and "Response:" not in p.prompt and p.prompt == p.prompt.strip()
            assert len(demo.instruction_text(p.prompt).split()) <= 14
    with pytest.raises(ValueError, match="unknown split"):
        world.prompts("test")


def test_splits_are_disjoint(world):
    texts = {s: {p.prompt for p in world.prompts(s)} for s in demo.SPLITS}
    for s, t in itertools.combinations(demo.SPLITS, 2):
        assert not texts[s] & texts[t], (s, t)
    # the held-out split repeats itself only once its share of the prompt space is used up
    assert len(texts["heldout"]) > 0.8 * len(world.prompts("heldout"))


def test_every_family_is_in_train_and_heldout(world):
    trained = set(FAMILIES_TRAINED := [f for f in world.families() if f != world.config.generalization_family])
    assert len(FAMILIES_TRAINED) >= 6
    assert set(world.families()) == set(demo.FAMILIES)
    train = Counter(world.family(p.prompt) for p in world.prompts("train"))
    heldout = Counter(world.family(p.prompt) for p in world.prompts("heldout"))
    assert set(train) == trained and set(heldout) == trained
    assert min(train.values()) > 0.1 * len(world.prompts("train"))


@pytest.mark.parametrize("family,category", [("count_down", "tool"), ("add", "fruit"), ("reverse", "color")])
def test_generalization_split_is_unseen(family, category):
    world = DemoWorld(TaskConfig(n_train_prompts=2000, n_pretrain_docs=2000, generalization_family=family,
                                 generalization_category=category))
    cat = CATEGORIES[category]
    unseen = set(cat.items) | {cat.singular, cat.plural}
    train_text = [p.prompt for p in world.prompts("train") + world.prompts("heldout")]
    train_text += [demo.format_prompt(d.prompt) + d.response for d in world.demonstrations()]
    for text in train_text:
        assert not _words(text) & unseen, text
        assert world.family(text.split("\nResponse:")[0]) != family, text
    skill_phrases = {"count_down": ("count down", "countdown"), "add": ("add", "plus", "make"),
                     "reverse": ("reverse", "backwards")}[family]
    for d in world.demonstrations():  # rambles never show the held-out family's skill either
        assert not any(re.search(rf"\b{s}\b", d.response) for s in skill_phrases), d
    train_prompts = {p.prompt for p in world.prompts("train")}
    gen = world.prompts("generalization")
    fams = Counter(world.family(p.prompt) for p in gen)
    assert fams[family] > 0 and len(fams) >= 5
    for p in gen:
        assert p.prompt not in train_prompts
        assert world.family(p.prompt) == family or _words(demo.instruction_text(p.prompt)) & unseen, p.prompt
    # ... but the pretraining corpus and the tokenizer corpus know the words
    corpus_words = set().union(*(_words(doc) for doc in world.pretraining_corpus("train")))
    assert set(cat.items) <= corpus_words
    assert {w.upper() for w in cat.items} <= set(" ".join(world.tokenizer_corpus()).split())


def test_build_via_config():
    cfg = load_config("tiny", ["task.seed=5", "task.n_train_prompts=100", "task.generalization_family=add"])
    module = importlib.import_module(f"raylhf.tasks.{cfg.task.name}")
    world = module.build(cfg.task)
    assert isinstance(world, Task) and world.name == "demo"
    assert world.config.seed == 5 and world.config.generalization_family == "add"
    assert len(world.prompts("train")) == 100
    assert world.config.labeler_noise == cfg.task.labeler_noise
    with pytest.raises(ConfigError, match="generalization_family"):
        load_config("tiny", ["task.generalization_family=poems"])
    with pytest.raises(ConfigError, match="heldout_share"):
        load_config("tiny", ["task.heldout_share=1.5"])


def test_build_takes_the_task_section_whole():
    cfg = TaskConfig(seed=2, n_train_prompts=50, labeler_noise=0.4)
    world = load_task(cfg)
    assert isinstance(world, DemoWorld) and world.config is cfg
    assert world.demonstrator.config is cfg
    assert world.labeler(0).noise == 0.4 and world.labeler(0, noise=0.1).noise == 0.1
    assert world.prompts("train") == demo.build(cfg).prompts("train")

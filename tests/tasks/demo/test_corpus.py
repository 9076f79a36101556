"""The pretraining corpus and the tokenizer's text."""

from __future__ import annotations

import random
import re

import pytest

from raylhf.tasks import demo


def test_pretraining_corpus(world):
    docs = world.pretraining_corpus("train")
    heldout = world.pretraining_corpus("heldout")
    assert len(docs) == 20000 and len(heldout) == 1000
    assert sum(len(d.split()) for d in docs) / len(docs) > 15
    # instruction-like lines continued by more instructions, never answered
    continued = 0
    for doc in docs:
        lines = doc.split("\n")
        for a, b in zip(lines, lines[1:]):
            if a.startswith("Instruction: "):
                assert b.startswith("Instruction: ") or b == "Response:", doc
                continued += b.startswith("Instruction: ")
        for a, b in zip(lines, lines[1:]):
            if a == "Response:":
                assert b.startswith("Instruction: "), doc
    assert continued > 1000
    # the facts the families need, written out
    text = "\n".join(docs)
    for pattern in (r"\bapple is a fruit\b", r"\b(\d+) plus (\d+) is (\d+)\b", r"\bin upper case is [A-Z]+\b",
                    r"\bcount with me : \d+ \d+ \d+", r"\bcounting down from \d+", r"\bbackwards is\b",
                    r"\bstarts with the letter [a-z]\b", r"\bsome fruits are\b"):
        assert re.search(pattern, text), pattern
    for a, b, c in re.findall(r"\b(\d+) plus (\d+) is (\d+)\b", text)[:500]:
        assert int(a) + int(b) == int(c)
    with pytest.raises(ValueError):
        world.pretraining_corpus("generalization")


def test_sentences_keep_to_their_categories_and_families():
    rng = random.Random(0)
    fruit = set(demo.CATEGORIES["fruit"].items)
    others = {w for c in demo.CATEGORIES.values() if c.singular != "fruit" for w in c.items}
    for _ in range(500):
        words = set(re.findall(r"[a-z]+", demo.write_sentence(rng, ["fruit"], ["list"])))
        assert words & fruit and not words & others
        assert not words & {"plus", "backwards", "countdown", "case", "capital", "baby"}


def test_tokenizer_corpus_covers_every_split(world):
    text = " ".join(world.tokenizer_corpus())
    vocab = set(re.findall(r"[A-Za-z]+", text))
    for split in demo.SPLITS:
        for p in world.prompts(split):
            assert set(re.findall(r"[A-Za-z]+", p.prompt)) <= vocab

"""The vocabulary: categories, families, the training-side views and the word helpers."""

from __future__ import annotations

import typing

from raylhf.configs.schema import TaskConfig
from raylhf.tasks import demo


def test_every_item_is_in_one_category():
    items = [w for c in demo.CATEGORIES.values() for w in c.items]
    assert len(items) == len(set(items))
    names = {c.singular for c in demo.CATEGORIES.values()} | set(demo.PLURALS)
    assert not names & set(items)
    assert demo.CATEGORIES["animal"].article == "an" and demo.CATEGORIES["fruit"].article == "a"


def test_config_choices_are_the_vocabulary():
    # TaskConfig validates the held-out family and category; its choices must be these.
    fields = TaskConfig.model_fields
    assert typing.get_args(fields["generalization_family"].annotation) == demo.FAMILIES
    assert typing.get_args(fields["generalization_category"].annotation) == tuple(demo.CATEGORIES)
    assert set(demo.WORD_FAMILIES) <= set(demo.FAMILIES) and demo.SEQUENCE_FAMILIES <= set(demo.FAMILIES)


def test_training_views_leave_out_the_held_out_ones():
    assert demo.trained_families("add") == [f for f in demo.FAMILIES if f != "add"]
    assert "tool" not in demo.seen_categories("tool") and len(demo.seen_categories("tool")) == 7
    assert demo.category_words(["drink"]) == list(demo.CATEGORIES["drink"].items)


def test_response_words_and_number_range():
    assert demo.response_words(" sure , CAT12 cat!\n") == ["sure", ",", "CAT", "12", "cat", "!"]
    assert demo.response_words("  ") == []
    assert demo.number_range(4, 6) == ("4", "5", "6")
    assert demo.number_range(6, 4) == ("6", "5", "4")
    assert demo.number_range(3, 3) == ("3",)

"""The closed vocabulary of the demo world and the instruction families.

Holds `Category`, `CATEGORIES` (item words by category), `PLURALS`, the instruction families
(`FAMILIES`, `WORD_FAMILIES`, `SEQUENCE_FAMILIES`), the training-side views `trained_families`,
`seen_categories` and `category_words`, and the word helpers `response_words` and `number_range`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Category:
    singular: str
    plural: str
    items: tuple[str, ...]

    @property
    def article(self) -> str:
        return "an" if self.singular[0] in "aeiou" else "a"


# Every item belongs to exactly one category; item words never double as filler words.
CATEGORIES: dict[str, Category] = {
    c.singular: c
    for c in (
        Category("fruit", "fruits",
                 tuple("apple banana cherry grape lemon mango orange peach pear plum melon lime".split())),
        Category("animal", "animals", tuple("cat dog horse cow pig sheep goat duck fox bear lion mouse".split())),
        Category("color", "colors", tuple("red blue green yellow black white pink brown gray purple".split())),
        Category("vehicle", "vehicles", tuple("car bus bike train truck boat ship plane van taxi".split())),
        Category("drink", "drinks", tuple("water milk tea coffee juice soda cocoa wine".split())),
        Category("flower", "flowers", tuple("rose lily tulip daisy iris poppy lotus orchid".split())),
        Category("instrument", "instruments", tuple("piano guitar drum flute violin harp horn cello".split())),
        Category("tool", "tools", tuple("hammer saw drill wrench axe shovel rake chisel pliers spade".split())),
    )
}
PLURALS: dict[str, str] = {c.plural: c.singular for c in CATEGORIES.values()}

FAMILIES: tuple[str, ...] = ("list", "repeat", "upper", "count", "reverse", "add", "starts_with", "count_down")
# Families whose prompt names a category or a word, so the held-out category can appear in them.
WORD_FAMILIES: tuple[str, ...] = ("list", "repeat", "upper", "reverse", "starts_with")
SEQUENCE_FAMILIES = frozenset({"repeat", "upper", "count", "count_down", "reverse", "add"})


def trained_families(generalization_family: str) -> list[str]:
    """The families training prompts and demonstrations may show: all but the held-out one."""
    return [f for f in FAMILIES if f != generalization_family]


def seen_categories(generalization_category: str) -> list[str]:
    """The categories training prompts and demonstrations may name: all but the held-out one."""
    return [c for c in CATEGORIES if c != generalization_category]


def category_words(categories: Iterable[str]) -> list[str]:
    """The item words of `categories`, in category then vocabulary order."""
    return [w for c in categories for w in CATEGORIES[c].items]


_WORD_RE = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")


def response_words(text: str) -> list[str]:
    """Words of a response: runs of letters, runs of digits, single punctuation marks."""
    return _WORD_RE.findall(text)


def number_range(a: int, b: int) -> tuple[str, ...]:
    """The numbers from `a` to `b`, both included, counting up or down, as words."""
    step = 1 if b >= a else -1
    return tuple(str(i) for i in range(a, b + step, step))

"""The pretraining corpus: web-like documents that write the facts and skills of the world out.

Holds `write_document` (one document: a worksheet of unanswered instructions, a quiz page, or
sentences) and `write_sentence` (one sentence about the given categories that shows a skill of the
given families, or a plain fact); the demonstrator's rambles reuse `write_sentence`.
"""

from __future__ import annotations

import random
from typing import Sequence

from raylhf.tasks.demo.prompts import (
    ADD_RANGE,
    COUNT_LEN,
    COUNT_START,
    REPEAT_N,
    REVERSE_LEN,
    write_instruction,
)
from raylhf.tasks.demo.vocabulary import CATEGORIES, FAMILIES, category_words, number_range


def write_document(rng: random.Random) -> str:
    """One pretraining document about every category and family."""
    all_cats = list(CATEGORIES)
    kind = rng.random()
    if kind < 0.2:  # a worksheet: instructions continued by more instructions, never answered
        header = rng.choice(["", "homework sheet", "exercises for class 3", "practice page", "lesson 4"])
        lines = [header] if header else []
        blank_responses = rng.random() < 0.6
        for _ in range(rng.randint(3, 7)):
            family = rng.choice(FAMILIES)
            lines.append("Instruction: " + write_instruction(rng, family, all_cats))
            if blank_responses:
                lines.append("Response:")
        return "\n".join(lines)
    if kind < 0.3:  # a quiz page: questions with answers written out
        return "\n".join(_quiz_line(rng) for _ in range(rng.randint(2, 5)))
    sentences = [write_sentence(rng, all_cats, FAMILIES) for _ in range(rng.randint(2, 6))]
    return " . ".join(sentences) + " ."


_LIFE = {
    "fruit": ("i like to eat {x}", "we bought {x} at the shop", "the {x} was very sweet"),
    "animal": ("the {x} is on the farm", "my friend has a {x}", "a {x} ran in the park"),
    "color": ("my house is {x}", "she likes the color {x}", "the sign is {x}"),
    "vehicle": ("we ride the {x} to school", "the {x} is very fast", "we took the {x} to the city"),
    "drink": ("i drink {x} in the morning", "a cup of {x} is nice", "the kids want {x}"),
    "flower": ("a {x} grows in the garden", "mom likes the {x}", "the {x} is nice"),
    "instrument": ("she plays the {x}", "the {x} sounds nice", "my friend plays the {x} at school"),
    "tool": ("dad fixed the shed with a {x}", "the {x} is in the box", "we use a {x} in the garden"),
}


# Sentence kinds and the instruction family whose skill each one shows (None: plain facts).
# Rambles in demonstrations only use kinds of trained families.
_SENTENCE_KINDS = (
    ("life", None), ("life", None), ("fact", None), ("some", "list"), ("letter", "starts_with"),
    ("count", "count"), ("count_down", "count_down"), ("add", "add"), ("upper", "upper"), ("upper", "upper"),
    ("repeat", "repeat"), ("reverse", "reverse"),
)


def _nums(rng: random.Random) -> tuple[int, int]:
    a = rng.randint(*COUNT_START)
    return a, a + rng.randint(*COUNT_LEN) - 1


def write_sentence(rng: random.Random, categories: Sequence[str], families: Sequence[str]) -> str:
    """One sentence about `categories`: a fact, or a skill of one of `families` written out."""
    cat = CATEGORIES[rng.choice(list(categories))]
    pool = category_words(categories)
    x = rng.choice(cat.items)
    kinds = [k for k, family in _SENTENCE_KINDS if family is None or family in families]
    kind = rng.choice(kinds)
    if kind == "life":
        return rng.choice(_LIFE[cat.singular]).format(x=x)
    if kind == "fact":
        return rng.choice((f"{x} is {cat.article} {cat.singular}", f"{x} is a kind of {cat.singular}",
                           f"my favorite {cat.singular} is {x}"))
    if kind == "some":
        xs = rng.sample(cat.items, rng.randint(2, 5))
        if rng.random() < 0.5:
            return f"some {cat.plural} are {' , '.join(xs[:-1])} and {xs[-1]}"
        return f"{cat.plural} : {' '.join(xs)}"
    if kind == "letter":
        l = x[0]
        same = [y for y in cat.items if y.startswith(l)]
        if rng.random() < 0.5:
            return f"{x} starts with the letter {l}"
        return f"{cat.plural} that start with {l} : {' '.join(same)}"
    if kind == "count_down":
        a, b = _nums(rng)
        seq = " ".join(number_range(b, a))
        return rng.choice((f"counting down from {b} to {a} : {seq}", f"the countdown went {seq} and go"))
    if kind == "count":
        a, b = _nums(rng)
        seq = " ".join(number_range(a, b))
        return rng.choice((f"count with me : {seq}", f"the kids counted from {a} to {b} : {seq}", f"page {seq}"))
    if kind == "add":
        a, b = rng.randint(*ADD_RANGE), rng.randint(*ADD_RANGE)
        c = a + b
        return rng.choice((f"{a} plus {b} is {c}", f"{a} and {b} make {c}", f"if you add {a} and {b} you get {c}"))
    w = rng.choice(pool)
    if kind == "upper":
        return rng.choice((f"the word {w} in upper case is {w.upper()}", f"the sign said {w.upper()}",
                           f"{w} in capital letters is {w.upper()}", f"she wrote {w.upper()} on the board"))
    if kind == "repeat":
        n = rng.randint(*REPEAT_N)
        return rng.choice((f"the baby said {' '.join([w] * n)}", f"{' '.join([w] * n)} is the word {w} {n} times"))
    ws = rng.sample(pool, rng.randint(*REVERSE_LEN))
    rev = " ".join(reversed(ws))
    return rng.choice((f"{' '.join(ws)} backwards is {rev}", f"in reverse order {' '.join(ws)} becomes {rev}"))


def _quiz_line(rng: random.Random) -> str:
    a, b = rng.randint(*ADD_RANGE), rng.randint(*ADD_RANGE)
    cat = CATEGORIES[rng.choice(list(CATEGORIES))]
    x = rng.choice(cat.items)
    q, ans = rng.choice(
        (
            (f"what is {a} plus {b} ?", str(a + b)),
            (f"what is {x} in upper case ?", x.upper()),
            (f"what letter does {x} start with ?", x[0]),
            (f"is {x} {cat.article} {cat.singular} ?", "yes"),
        )
    )
    return f"question : {q} answer : {ans}"


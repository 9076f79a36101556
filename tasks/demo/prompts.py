"""Writing and reading the demo task's prompts.

Holds the prompt format (`PROMPT_FORMAT`, `format_prompt`, `instruction_text`), the templates and
parameter ranges of each instruction family (`TEMPLATES`, `LIST_EXCLUDE_SUFFIX`, `LIST_N`, ...),
`write_instruction` (one instruction text drawn from a random generator) and `Spec` with
`parse_prompt`, which reads back what a prompt asks for from its text alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from raylhf.tasks.demo.vocabulary import CATEGORIES, PLURALS, category_words, number_range

# Parameter ranges (answers stay <= 8 words: the policy generates at most 32 tokens).
LIST_N = (2, 5)
REPEAT_N = (2, 5)
COUNT_START = (1, 20)
COUNT_LEN = (3, 7)
ADD_RANGE = (0, 12)
REVERSE_LEN = (3, 4)
LIST_EXCLUDE_PROB = 0.3

# Prompt templates per family. Slots: n a b (numbers), plural sing art (category), w (a word),
# ws (several words), l (a letter), x (an excluded item).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "list": ("list {n} {plural}", "name {n} {plural}", "write {n} {plural}"),
    "repeat": ("repeat the word {w} {n} times", "say {w} {n} times", "write the word {w} {n} times"),
    "upper": ("write the word {w} in upper case", "write {w} in capital letters", "say {w} in upper case"),
    "count": ("count from {a} to {b}", "count up from {a} to {b}"),
    "reverse": ("reverse the words {ws}", "say {ws} backwards", "write {ws} in reverse order"),
    "add": ("add {a} and {b}", "what is {a} plus {b}", "compute {a} plus {b}"),
    "starts_with": (
        "name {art} {sing} that starts with the letter {l}",
        "name {art} {sing} starting with {l}",
        "give {art} {sing} that begins with {l}",
    ),
    "count_down": ("count down from {a} to {b}",),
}
LIST_EXCLUDE_SUFFIX = " other than {x}"

PROMPT_FORMAT = "Instruction: {instruction}\nResponse:"

# The demo model's chat template: a user turn is framed as `PROMPT_FORMAT`, after BOS; an assistant turn is its
# text and EOS. Prompts are stored as the bare instruction and rendered through it, so the saved checkpoints
# answer a chat request (`vllm serve`, a transformers pipeline) with the ids they were trained on.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Instruction: ' + message['content'] + '\nResponse:' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def format_prompt(instruction: str) -> str:
    """The prompt as the model reads it (what the chat template renders from a user turn, after BOS)."""
    return PROMPT_FORMAT.format(instruction=instruction)


def instruction_text(prompt: str) -> str:
    """The instruction of a prompt: the text between "Instruction:" and "Response:" (either optional)."""
    text = prompt
    i = text.find("Instruction:")
    if i >= 0:
        text = text[i + len("Instruction:") :]
    j = text.find("Response:")
    if j >= 0:
        text = text[:j]
    return " ".join(text.lower().split()).rstrip(" .?!")


# --------------------------------------------------------------------------------------------
# Writing instructions
# --------------------------------------------------------------------------------------------


def write_instruction(
    rng: random.Random, family: str, categories: Sequence[str], mix_with: Sequence[str] | None = None
) -> str:
    """One instruction text of a family about `categories`. With `mix_with` (the seen words, when
    `categories` is the held-out category), a reverse prompt has at least one word of `categories`
    and draws the rest from `mix_with` and `categories`."""
    template = rng.choice(TEMPLATES[family])
    cat = CATEGORIES[rng.choice(list(categories))]
    word_pool = category_words(categories)
    if family == "list":
        n = rng.randint(*LIST_N)
        if rng.random() < LIST_EXCLUDE_PROB:
            return template.format(n=n, plural=cat.plural) + LIST_EXCLUDE_SUFFIX.format(x=rng.choice(cat.items))
        return template.format(n=n, plural=cat.plural)
    if family == "repeat":
        return template.format(w=rng.choice(word_pool), n=rng.randint(*REPEAT_N))
    if family == "upper":
        return template.format(w=rng.choice(word_pool))
    if family == "reverse":
        k = rng.randint(*REVERSE_LEN)
        if mix_with is not None:
            ws = [rng.choice(word_pool)]
            ws += rng.sample([w for w in list(mix_with) + word_pool if w not in ws], k - 1)
            rng.shuffle(ws)
        else:
            ws = rng.sample(word_pool, k)
        return template.format(ws=" ".join(ws))
    if family == "add":
        return template.format(a=rng.randint(*ADD_RANGE), b=rng.randint(*ADD_RANGE))
    if family == "starts_with":
        return template.format(art=cat.article, sing=cat.singular, l=rng.choice(cat.items)[0])
    a = rng.randint(*COUNT_START)
    b = a + rng.randint(*COUNT_LEN) - 1
    return template.format(a=a, b=b) if family == "count" else template.format(a=b, b=a)


# --------------------------------------------------------------------------------------------
# Reading prompts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for, parsed from its text."""

    family: str
    length: int  # L: words in an ideal answer
    target: tuple[str, ...] = ()  # sequence families: the ideal answer
    category: str | None = None  # list, starts_with
    letter: str | None = None  # starts_with
    exclude: str | None = None  # list: an item that must not be named

    def answer_like(self, word: str) -> bool:
        """Whether a word would continue the answer (used for the `exact` constraint check)."""
        w = word.lower()
        if self.family in ("list", "starts_with"):
            return w in CATEGORIES[self.category].items
        if self.family in ("count", "count_down", "add"):
            return word.isdigit()
        return w in {t.lower() for t in self.target}


_SLOT_RE = {
    "n": r"(?P<n>\d+)",
    "a": r"(?P<a>\d+)",
    "b": r"(?P<b>\d+)",
    "plural": r"(?P<plural>[a-z]+)",
    "sing": r"(?P<sing>[a-z]+)",
    "art": r"(?P<art>an?)",
    "w": r"(?P<w>[a-z]+)",
    "ws": r"(?P<ws>[a-z]+(?: [a-z]+){1,7})",
    "l": r"(?P<l>[a-z])",
    "x": r"(?P<x>[a-z]+)",
}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{[a-z]+\})", template)
    body = "".join(_SLOT_RE[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


_PATTERNS: list[tuple[str, re.Pattern]] = [
    (family, _template_regex(t + suffix))
    for family, templates in TEMPLATES.items()
    for t in templates
    for suffix in ((LIST_EXCLUDE_SUFFIX, "") if family == "list" else ("",))
]


@lru_cache(maxsize=1 << 16)
def parse_prompt(prompt: str) -> Spec:
    """The Spec of a prompt's instruction; ValueError if it is not one of the demo families."""
    text = instruction_text(prompt)
    for family, pattern in _PATTERNS:
        m = pattern.match(text)
        if m is None:
            continue
        g = m.groupdict()
        if family == "list":
            cat = PLURALS.get(g["plural"])
            if cat is None:
                continue
            return Spec("list", length=max(1, int(g["n"])), category=cat, exclude=g.get("x"))
        if family == "starts_with":
            if g["sing"] not in CATEGORIES:
                continue
            return Spec("starts_with", length=1, category=g["sing"], letter=g["l"])
        if family == "repeat":
            n = int(g["n"])
            if not 1 <= n <= 12:
                continue
            return Spec("repeat", length=n, target=(g["w"],) * n)
        if family == "upper":
            return Spec("upper", length=1, target=(g["w"].upper(),))
        if family == "reverse":
            target = tuple(reversed(g["ws"].split()))
            return Spec("reverse", length=len(target), target=target)
        if family == "add":
            return Spec("add", length=1, target=(str(int(g["a"]) + int(g["b"])),))
        if family in ("count", "count_down"):
            a, b = int(g["a"]), int(g["b"])
            if abs(b - a) + 1 > 12:
                continue
            target = number_range(a, b)
            return Spec(family, length=len(target), target=target)
    raise ValueError(f"not a demo-task prompt (no instruction family matches): {prompt!r}")

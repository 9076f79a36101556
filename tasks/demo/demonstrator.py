"""The demonstrator: `Demonstrator` writes the SFT responses, with its phrasing (`VERBOSE_PREFIXES`,
`VERBOSE_SUFFIXES`, `RAMBLE_MAX_WORDS`) and the kinds of response it writes (`DEMO_KINDS`).

It writes one response per training prompt the way hired labelers do: mostly the ideal answer,
with `ramble_rate` continuing after the answer the way a base model continues text (another
instruction line, or a sentence of corpus text), `verbose_rate` wrapping it in needless words and
`wrong_rate` giving a plausible wrong answer (wrong count, wrong order, off by one, lower case...).
Its words and skills are those of training: never the held-out family or category.
"""

from __future__ import annotations

import random

from raylhf.configs.schema import TaskConfig
from raylhf.tasks.demo.corpus import write_sentence
from raylhf.tasks.demo.prompts import Spec, parse_prompt, write_instruction
from raylhf.tasks.demo.vocabulary import (
    CATEGORIES,
    SEQUENCE_FAMILIES,
    category_words,
    response_words,
    seen_categories,
    trained_families,
)

DEMO_KINDS = ("good", "ramble", "verbose", "wrong")

VERBOSE_PREFIXES = (
    "sure , here is the answer :",
    "ok , the answer is",
    "here you go :",
    "of course ! here it is :",
    "the answer is :",
    "sure thing , this is it :",
    "good question ! it is",
)
RAMBLE_MAX_WORDS = 24
VERBOSE_SUFFIXES = (" . i hope this helps", " . let me know if you need more", " . that is all")


class Demonstrator:
    """Responses to demo prompts with the flaw rates of a `TaskConfig`."""

    def __init__(self, config: TaskConfig):
        self.config = config
        self.train_families = trained_families(config.generalization_family)
        self.seen_categories = seen_categories(config.generalization_category)
        self.seen_words = category_words(self.seen_categories)

    def demonstrate(self, prompt: str, rng: random.Random, kind: str | None = None) -> tuple[str, str]:
        """A demonstrator's response to a prompt and its kind (drawn with the configured rates)."""
        if kind is None:
            u = rng.random()
            r, v, w = self.config.ramble_rate, self.config.verbose_rate, self.config.wrong_rate
            kind = "wrong" if u < w else "verbose" if u < w + v else "ramble" if u < w + v + r else "good"
        spec = parse_prompt(prompt)
        if kind == "wrong":
            return " " + " ".join(self._wrong_answer(spec, rng)), kind
        answer = " ".join(self._good_answer(spec, rng))
        if kind == "good":
            return " " + answer, kind
        if kind == "verbose":
            suffix = rng.choice(VERBOSE_SUFFIXES) if rng.random() < 0.3 else ""
            return f" {rng.choice(VERBOSE_PREFIXES)} {answer}{suffix}", kind
        if kind == "ramble":
            # at most RAMBLE_MAX_WORDS in all, so most rambling demonstrations fit the generation budget
            budget = RAMBLE_MAX_WORDS - len(response_words(answer))
            rambles = [self._ramble(rng) for _ in range(3)]
            fitting = [r for r in rambles if len(response_words(r)) <= budget]
            return " " + answer + (fitting[0] if fitting else min(rambles, key=len)), kind
        raise ValueError(f"unknown demonstration kind {kind!r}; kinds: {', '.join(DEMO_KINDS)}")

    def _good_answer(self, spec: Spec, rng: random.Random) -> list[str]:
        if spec.family in SEQUENCE_FAMILIES:
            return list(spec.target)
        items = CATEGORIES[spec.category].items
        if spec.family == "list":
            pool = [x for x in items if x != spec.exclude]
            return rng.sample(pool, min(spec.length, len(pool)))
        return [rng.choice([x for x in items if x.startswith(spec.letter)] or list(items))]

    def _wrong_answer(self, spec: Spec, rng: random.Random) -> list[str]:
        """Plausible mistakes: wrong count, wrong order, wrong case, off by one, wrong category."""
        f, t = spec.family, list(spec.target)
        if f == "list":
            items = [x for x in CATEGORIES[spec.category].items if x != spec.exclude]
            mode = rng.choice(["short", "long", "other", "exclude"] if spec.exclude else ["short", "long", "other"])
            n = min(spec.length, len(items))
            if mode == "short":
                return rng.sample(items, max(1, n - 1))
            if mode == "long":
                return rng.sample(items, min(len(items), n + 1))
            if mode == "exclude":
                return rng.sample(items, n - 1) + [spec.exclude]
            other = CATEGORIES[rng.choice([c for c in self.seen_categories if c != spec.category])].items
            ans = rng.sample(items, n)
            ans[rng.randrange(len(ans))] = rng.choice(other)
            return ans
        if f == "starts_with":
            items = CATEGORIES[spec.category].items
            wrong = [x for x in items if not x.startswith(spec.letter)]
            if rng.random() < 0.5 and wrong:
                return [rng.choice(wrong)]
            others = [w for w in self.seen_words if w.startswith(spec.letter) and w not in items]
            return [rng.choice(others or wrong or ["yes"])]
        if f == "repeat":
            n = spec.length + rng.choice([-1, 1]) if spec.length > 1 else 2
            return [t[0]] * n
        if f == "upper":
            if rng.random() < 0.6:
                return [t[0].lower()]
            return [rng.choice([w for w in self.seen_words if w != t[0].lower()]).upper()]
        if f == "add":
            s = int(t[0])
            return [str(max(0, s + rng.choice([-2, -1, 1, 2])))]
        if f == "reverse":
            if rng.random() < 0.6:
                return list(reversed(t))  # the words in their original order
            ans = t[:]
            ans[0], ans[1] = ans[1], ans[0]
            return ans
        # count, count_down: stop early, go one too far, or skip a number
        mode = rng.choice(["early", "far", "skip"] if len(t) >= 3 else ["far"])
        if mode == "early":
            return t[:-1]
        if mode == "far":
            step = 1 if f == "count" else -1
            return t + [str(int(t[-1]) + step)]
        ans = t[:]
        del ans[rng.randrange(1, len(ans) - 1)]
        return ans

    def _ramble(self, rng: random.Random) -> str:
        """What a base model writes after the answer: another instruction, or corpus text."""
        mode = rng.random()
        if mode < 0.5:
            instr = write_instruction(rng, rng.choice(self.train_families), self.seen_categories)
            text = f"\nInstruction: {instr}"
            if rng.random() < 0.5:
                text += "\nResponse:"
            return text
        if mode < 0.8:
            return " . " + write_sentence(rng, self.seen_categories, self.train_families)
        first = write_sentence(rng, self.seen_categories, self.train_families)
        return " . " + first + " . " + write_sentence(rng, self.seen_categories, self.train_families)

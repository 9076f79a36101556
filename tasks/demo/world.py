"""The demo world: `DemoWorld` (the demo task, implementing `raylhf.contracts.protocols.Task`),
its prompt splits (`SPLITS`: "train", "heldout", "generalization", described in the package
docstring) and `build`, which makes it from a `TaskConfig`.

Every dataset is drawn from `random.Random` seeded with strings (which hash with SHA-512, not
Python's randomised `hash`), so each is a function of the `TaskConfig` alone.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, TypeVar

from raylhf.configs.schema import TaskConfig
from raylhf.contracts.records import Comparison, Demonstration, Prompt
from raylhf.tasks.demo.comparisons import demo_comparisons
from raylhf.tasks.demo.corpus import write_document
from raylhf.tasks.demo.demonstrator import Demonstrator
from raylhf.tasks.demo.labeler import SimulatedLabeler, hash_unit
from raylhf.tasks.demo.prompts import CHAT_TEMPLATE, parse_prompt, write_instruction
from raylhf.tasks.demo.utility import Judgement, ideal_answer, judge
from raylhf.tasks.demo.vocabulary import (
    CATEGORIES,
    FAMILIES,
    WORD_FAMILIES,
    category_words,
    seen_categories,
    trained_families,
)

SPLITS = ("train", "heldout", "generalization")

T = TypeVar("T")


class DemoWorld:
    """The demo task of a `TaskConfig` (implements contracts.protocols.Task)."""

    name = "demo"
    chat_template = CHAT_TEMPLATE  # saved with the demo tokenizer: prompts are bare instructions

    def __init__(self, config: TaskConfig):
        self.config = config
        self.demonstrator = Demonstrator(config)
        self.train_families = trained_families(config.generalization_family)
        self.seen_categories = seen_categories(config.generalization_category)
        self.seen_words = category_words(self.seen_categories)
        self.unseen_words = list(CATEGORIES[config.generalization_category].items)
        self._cache: dict[Any, Any] = {}

    def memo(self, key: Any, make: Callable[[], T]) -> T:
        """`make()`, computed once per world and key: every dataset of a world is a function of its config."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # ---- Task protocol -------------------------------------------------------------------

    def families(self) -> list[str]:
        """All instruction families, the generalization family included (it is never trained on)."""
        return list(FAMILIES)

    def family(self, prompt: str) -> str:
        return parse_prompt(prompt).family

    def utility(self, prompt: str, response: str) -> float:
        return judge(prompt, response).utility

    def follows_instruction(self, prompt: str, response: str) -> bool:
        return judge(prompt, response).exact

    def judge(self, prompt: str, response: str) -> Judgement:
        return judge(prompt, response)

    def contrast(self, prompt: str, a: str, b: str) -> str:
        """What separates two responses in the hidden utility (`raylhf.contracts.protocols.ContrastingTask`),
        the first that applies: `empty_vs_nonempty`, `correct_vs_wrong` (one follows the instruction, the other
        does not),
        `more_vs_less_correct` (both or neither do, with different graded correctness), `concise_vs_rambling`
        (equally correct, different numbers of extra words), `equal_utility` (only the labeler's noise
        separates them)."""
        ja, jb = judge(prompt, a), judge(prompt, b)
        if (ja.n_words == 0) != (jb.n_words == 0):
            return "empty_vs_nonempty"
        if ja.exact != jb.exact:
            return "correct_vs_wrong"
        if ja.correctness != jb.correctness:
            return "more_vs_less_correct"
        if ja.extra_words != jb.extra_words:
            return "concise_vs_rambling"
        return "equal_utility"

    def ideal_response(self, prompt: str) -> str:
        return ideal_answer(prompt)

    def labeler(self, seed: int, noise: float | None = None) -> SimulatedLabeler:
        """An independent simulated labeler per seed; `noise` overrides the configured level."""
        return SimulatedLabeler(seed, self.config.labeler_noise if noise is None else noise)

    def prompts(self, split: str) -> list[Prompt]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")

        def make() -> list[Prompt]:
            texts = self._instructions(split)
            return [Prompt(f"{split}-{i:06d}", text) for i, text in enumerate(texts)]

        return list(self.memo(("prompts", split), make))

    def demonstrations(self) -> list[Demonstration]:
        return [d for d, _ in self.demonstrations_with_kinds()]

    def demonstrations_with_kinds(self) -> list[tuple[Demonstration, str]]:
        """Demonstrations with the demonstrator's flaw kind ("good", "ramble", "verbose", "wrong")."""

        def make() -> list[tuple[Demonstration, str]]:
            rng = random.Random(f"demo-world/{self.config.seed}/demonstrations")
            out = []
            for p in self.prompts("train"):
                response, kind = self.demonstrate(p.prompt, rng)
                out.append((Demonstration(p.prompt_id, p.prompt, response), kind))
            return out

        return list(self.memo("demos", make))

    def pretraining_corpus(self, split: str) -> list[str]:
        """Web-like documents; "heldout" has 5 % as many documents as "train"."""
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown corpus split {split!r}; splits: train, heldout")

        def make() -> list[str]:
            n_docs = self.config.n_pretrain_docs
            n = n_docs if split == "train" else max(1, round(0.05 * n_docs))
            rng = random.Random(f"demo-world/{self.config.seed}/corpus/{split}")
            return [write_document(rng) for _ in range(n)]

        return list(self.memo(("corpus", split), make))

    def seed_comparisons(self, n: int, k: int, seed: int) -> list[Comparison]:
        """Rankings of K demonstrator-written responses per prompt (see `demo_comparisons`)."""
        return demo_comparisons(self, n, k, seed)

    def tokenizer_corpus(self) -> Iterator[str]:
        """Text for the BPE tokenizer: corpus, prompts of every split, demonstrations, the vocabulary."""
        yield from self.pretraining_corpus("train")
        for split in SPLITS:
            for p in self.prompts(split):
                yield p.prompt
        for d in self.demonstrations():
            yield d.prompt + d.response
        yield " ".join(w for c in CATEGORIES.values() for w in (c.singular, c.plural, *c.items))
        yield " ".join(w.upper() for c in CATEGORIES.values() for w in c.items)

    # ---- demonstrator ----------------------------------------------------------------------

    def demonstrate(self, prompt: str, rng: random.Random, kind: str | None = None) -> tuple[str, str]:
        """A demonstrator's response to a prompt and its kind (drawn with the configured rates)."""
        return self.demonstrator.demonstrate(prompt, rng, kind)

    # ---- prompts ---------------------------------------------------------------------------

    def is_heldout_text(self, instruction: str) -> bool:
        """Whether an instruction text belongs to the held-out share of the prompt space."""
        return hash_unit("heldout", self.config.seed, instruction) < self.config.heldout_share

    def train_instruction(self, rng: random.Random) -> str:
        """An instruction text of the training distribution (held-out share included)."""
        return write_instruction(rng, rng.choice(self.train_families), self.seen_categories)

    def _split_size(self, split: str) -> int:
        return {
            "train": self.config.n_train_prompts,
            "heldout": self.config.n_heldout_prompts,
            "generalization": self.config.n_generalization_prompts,
        }[split]

    def _instructions(self, split: str) -> list[str]:
        rng = random.Random(f"demo-world/{self.config.seed}/prompts/{split}")
        n = self._split_size(split)
        out: list[str] = []
        if split == "train":
            while len(out) < n:
                text = self.train_instruction(rng)
                if not self.is_heldout_text(text):
                    out.append(text)
            return out
        used: set[str] = set()
        held_family, held_category = self.config.generalization_family, self.config.generalization_category
        families = (
            self.train_families
            if split == "heldout"
            else [held_family] + [f for f in WORD_FAMILIES if f != held_family]
        )
        while len(out) < n:
            family = families[len(out) % len(families)]
            for tries in range(10_000):
                if split == "heldout":
                    text = write_instruction(rng, family, self.seen_categories)
                    ok = self.is_heldout_text(text)
                elif family == held_family:
                    text = write_instruction(rng, family, self.seen_categories)
                    ok = True
                else:
                    text = write_instruction(rng, family, [held_category], mix_with=self.seen_words)
                    ok = True
                # Unique while the family's share of the prompt space lasts, then repeats.
                if ok and (text not in used or tries >= 200):
                    break
            else:
                raise ValueError(f"no {split} prompt of family {family!r} found; raise task.heldout_share")
            used.add(text)
            out.append(text)
        rng.shuffle(out)
        return out


def build(task_config: TaskConfig) -> DemoWorld:
    """The demo world of a `raylhf.configs.schema.TaskConfig`."""
    return DemoWorld(task_config)

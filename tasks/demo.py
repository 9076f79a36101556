"""The built-in demo task: a small synthetic instruction-following world.

It stands in for the paper's API prompts, hired demonstrators and human labelers, so the whole
pipeline (pretrain -> SFT -> reward model -> PPO-ptx -> eval) runs and can be judged offline.

World
-----
A closed vocabulary of a few hundred lowercase words (eight categories of items, numbers 0..26,
letters, filler words) and the upper-case forms of the item words, so a 1024-token byte-level BPE
makes nearly every word one token. Prompts and responses have one fixed format::

    prompt   = "Instruction: repeat the word cat 3 times\\nResponse:"
    response = " cat cat cat"            (leading space; EOS is appended by contracts.formatting)

Instruction families (every answer is checkable from the prompt text alone):

    list         "list 3 fruits [other than pear]"            -> " apple lemon plum"   (any N items)
    repeat       "repeat the word cat 3 times"                -> " cat cat cat"
    upper        "write the word cat in upper case"           -> " CAT"
    count        "count from 4 to 8"                          -> " 4 5 6 7 8"
    reverse      "reverse the words red cat blue"             -> " blue cat red"
    add          "add 3 and 9"                                -> " 12"
    starts_with  "name a fruit that starts with the letter p" -> " pear"               (any such item)
    count_down   "count down from 9 to 5"                     -> " 9 8 7 6 5"

Splits: "train" and "heldout" draw from the same distribution (every family except the
generalization family, items of every category except the generalization category); a stable
hash of the prompt text reserves a share of each family's prompt texts for "heldout", so held-out
prompts are never trained on. "generalization" holds the prompts of the held-out family
(default `count_down`) and of the word families whose words come from the held-out category
(default `tool`); neither ever appears in train prompts or demonstrations, but both appear in
the pretraining corpus so the tokenizer and the base model know the words.

Hidden utility (`utility`)
--------------------------
The response is split into words (letters runs, digit runs, single punctuation marks; whitespace
is ignored). Of all contiguous spans of response words the most favourable one is read as the
answer (the empty span included); with m words in the response, span S, answer length L::

    C(S)  = clip((credit(S) - 0.5 * unmatched(S)) / L, 0, 1)                  graded correctness
    U     = max_S [ C(S) + 0.25 * exact(S) - 0.04 * extra(S) ]                per extra word
    U     = -0.3 for an empty response

- credit: sequence families (repeat, upper, count, count_down, reverse, add) align S to the ideal
  answer with a weighted longest common subsequence; a word scores 1 when it is the ideal word,
  0.5 in the wrong case, and for `add` 0.25 when the number is off by one. Set families: `list`
  scores 1 per distinct item of the category (not the excluded one), at most N; `starts_with`
  scores 1 for an item of the category starting with the letter, 0.3 for another item of it.
- unmatched: words inside the span that earned nothing (wrong, duplicate or surplus words);
  punctuation inside the span (", . : ; ! ? -") is not unmatched but counts as an extra word.
- exact ("satisfies the constraint"): full credit, nothing unmatched, and the words right before
  and after the span (skipping commas) do not continue the answer (no fourth fruit after three,
  no extra number, no second CAT).
- extra(S): every word outside the span (a verbose wrapper, trailing rambling) plus the span's
  punctuation costs 0.04, so a correct answer followed by ten words of rambling (1.25 - 0.40)
  still beats a wrong answer (<= 0), and the shortest correct answer is the best response (1.25,
  the maximum; no other response reaches it).

`follows_instruction` is `exact` for the best span: the answer is there, correct and with its
constraint satisfied; concision is left to the utility.

Simulated labeler
-----------------
A labeler of seed s scores a response as `utility + labeler_noise * z`, with z ~ N(0, 1) drawn
from a hash of (s, prompt, response): a Thurstone-style labeler whose rankings are transitive and
who gives the same judgement when asked twice. Two labelers are independent when their seeds
differ. Ties: identical responses get identical scores, so `prefer` returns 0.5 and `rank` keeps
them in input order next to each other; different responses of equal utility are separated by the
noise (with `labeler_noise = 0` they tie: `prefer` returns 0.5 and `rank` keeps input order).
The noise is calibrated on a fixed reference set (`reference_pairs`: pairs of two different
demonstrator responses to the same training-distribution prompt) so two labelers agree on
~73 % of its pairs (InstructGPT: 72.6 +- 1.5 %); `labeler_agreement` measures it, together with
the agreement of a labeler with the noiseless utility.

Demonstrator
------------
Writes one SFT response per training prompt the way hired labelers do: mostly the ideal answer,
with `ramble_rate` continuing after the answer the way a base model continues text (another
instruction line, or a sentence of corpus text), `verbose_rate` wrapping it in needless words and
`wrong_rate` giving a plausible wrong answer (wrong count, wrong order, off by one, lower case...).

Everything is a deterministic function of the seed (random.Random seeded with strings, which
hash with SHA-512, not Python's randomised `hash`).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Iterator, Sequence

from raylhf.contracts.records import Comparison, Demonstration, Prompt

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


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

# Utility constants (see the module docstring).
UNMATCHED_COST = 0.5  # per word inside the answer span that earned nothing, in units of 1/L
EXACT_BONUS = 0.25  # correct, complete and nothing continuing the answer
EXTRA_WORD_COST = 0.04  # per response word outside the answer span
EMPTY_UTILITY = -0.3  # an empty response
CASE_CREDIT = 0.5  # right word, wrong case
OFF_BY_ONE_CREDIT = 0.25  # add: the sum off by one
WRONG_LETTER_CREDIT = 0.3  # starts_with: an item of the category with another first letter

# Demonstrator phrasing.
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

_WORD_RE = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")
PUNCTUATION = frozenset(",.:;!?-")  # inside an answer span these cost as extra words, not as wrong ones


def response_words(text: str) -> list[str]:
    """Words of a response: runs of letters, runs of digits, single punctuation marks."""
    return _WORD_RE.findall(text)


def format_prompt(instruction: str) -> str:
    return PROMPT_FORMAT.format(instruction=instruction)


# --------------------------------------------------------------------------------------------
# Parsing prompts
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


def _sequence_range(a: int, b: int) -> tuple[str, ...]:
    step = 1 if b >= a else -1
    return tuple(str(i) for i in range(a, b + step, step))


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
            target = _sequence_range(a, b)
            return Spec(family, length=len(target), target=target)
    raise ValueError(f"not a demo-task prompt (no instruction family matches): {prompt!r}")


# --------------------------------------------------------------------------------------------
# Hidden utility
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """The noiseless verdict on one response."""

    family: str
    utility: float
    correctness: float  # C of the best span, in [0, 1]
    exact: bool  # correct and satisfies the constraint (follows the instruction)
    extra_words: int  # response words outside the answer span (wrapper, rambling)
    n_words: int


def _set_weight(spec: Spec, word: str) -> float:
    w = word.lower()
    items = CATEGORIES[spec.category].items
    if w not in items:
        return 0.0
    case = 1.0 if word == w else CASE_CREDIT
    if spec.family == "list":
        return 0.0 if w == spec.exclude else case
    return case if w.startswith(spec.letter) else WRONG_LETTER_CREDIT * case


def _seq_weight(spec: Spec, word: str, t: str) -> float:
    if word == t:
        return 1.0
    if word.lower() == t.lower():
        return CASE_CREDIT
    if spec.family == "add" and word.isdigit() and abs(int(word) - int(t)) == 1:
        return OFF_BY_ONE_CREDIT
    return 0.0


def _continued(spec: Spec, words: Sequence[str], s: int, e: int) -> bool:
    """Whether the word before or after the span words[s:e] continues the answer (commas skipped)."""
    i = s - 1
    while i >= 0 and words[i] == ",":
        i -= 1
    j = e
    while j < len(words) and words[j] == ",":
        j += 1
    return (i >= 0 and spec.answer_like(words[i])) or (j < len(words) and spec.answer_like(words[j]))


@lru_cache(maxsize=1 << 16)
def judge(prompt: str, response: str) -> Judgement:
    """Best-span reading of a response to a prompt (formula in the module docstring)."""
    spec = parse_prompt(prompt)
    words = response_words(response)
    m = len(words)
    if m == 0:
        return Judgement(spec.family, EMPTY_UTILITY, 0.0, False, 0, 0)
    L = spec.length
    seq = spec.family in SEQUENCE_FAMILIES
    if seq:
        weights = [[_seq_weight(spec, w, t) for t in spec.target] for w in words]
        creditable = [max(ws) > 0 for ws in weights]
    else:
        set_w = [_set_weight(spec, w) for w in words]
        creditable = [x > 0 for x in set_w]

    best = (-EXTRA_WORD_COST * m, 0.0, False, m)  # empty span: every word is extra
    max_span = 2 * L + 2
    for s in range(m):
        if not creditable[s]:  # an uncredited first word is cheaper outside the span
            continue
        if seq:
            row = [(0.0, 0)] * (L + 1)  # weighted LCS over target prefixes: (credit, matched)
        else:
            seen: dict[str, float] = {}
        n_punct = 0
        for e in range(s + 1, min(m, s + max_span) + 1):
            i = e - 1
            n_punct += words[i] in PUNCTUATION
            if seq:
                new = [(0.0, 0)]
                for j in range(1, L + 1):
                    cand = max(row[j], new[j - 1])
                    wt = weights[i][j - 1]
                    if wt > 0:
                        diag = (row[j - 1][0] + wt, row[j - 1][1] + 1)
                        cand = max(cand, diag)
                    new.append(cand)
                row = new
                credit, matched = row[L]
            else:
                key = words[i].lower()
                if set_w[i] > seen.get(key, 0.0):
                    seen[key] = set_w[i]
                top = sorted(seen.values(), reverse=True)[:L]
                credit, matched = sum(top), len(top)
            if not creditable[i]:
                continue
            unmatched = (e - s) - matched - n_punct
            c = min(1.0, max(0.0, (credit - UNMATCHED_COST * unmatched) / L))
            exact = credit >= L - 1e-9 and unmatched == 0 and not _continued(spec, words, s, e)
            extra = m - (e - s) + n_punct
            u = c + EXACT_BONUS * exact - EXTRA_WORD_COST * extra
            if u > best[0] + 1e-12:
                best = (u, c, exact, extra)
    u, c, exact, extra = best
    return Judgement(spec.family, round(u, 10), c, exact, extra, m)


def ideal_answer(prompt: str) -> str:
    """A shortest correct response (for set families, the first valid items in vocabulary order)."""
    spec = parse_prompt(prompt)
    if spec.family in SEQUENCE_FAMILIES:
        return " " + " ".join(spec.target)
    items = CATEGORIES[spec.category].items
    if spec.family == "list":
        return " " + " ".join([x for x in items if x != spec.exclude][: spec.length])
    return " " + next((x for x in items if x.startswith(spec.letter)), items[0])


# --------------------------------------------------------------------------------------------
# Labeler
# --------------------------------------------------------------------------------------------

_STD_NORMAL = NormalDist()


def _hash_unit(*parts: object) -> float:
    """A uniform number in (0, 1) from a stable hash of the parts."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(h, "big") + 0.5) / 2.0**64


class SimulatedLabeler:
    """Utility plus per-(labeler, prompt, response) Gaussian noise; see the module docstring."""

    def __init__(self, seed: int, noise: float):
        self.seed = seed
        self.noise = noise

    def score(self, prompt: str, response: str) -> float:
        u = judge(prompt, response).utility
        if self.noise == 0:
            return u
        return u + self.noise * _STD_NORMAL.inv_cdf(_hash_unit("labeler", self.seed, prompt, response))

    def rank(self, prompt: str, responses: Sequence[str]) -> list[int]:
        scores = [self.score(prompt, r) for r in responses]
        return sorted(range(len(responses)), key=lambda i: (-scores[i], i))

    def prefer(self, prompt: str, a: str, b: str) -> float:
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


# --------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------

SPLITS = ("train", "heldout", "generalization")
DEMO_KINDS = ("good", "ramble", "verbose", "wrong")


class DemoWorld:
    """The demo task (implements contracts.protocols.Task). Build it with `build(cfg.task)`."""

    name = "demo"

    def __init__(
        self,
        seed: int = 0,
        n_train_prompts: int = 4000,
        n_heldout_prompts: int = 300,
        n_generalization_prompts: int = 300,
        n_pretrain_docs: int = 20000,
        ramble_rate: float = 0.25,
        verbose_rate: float = 0.10,
        wrong_rate: float = 0.05,
        labeler_noise: float = 0.23,
        heldout_share: float = 0.2,
        generalization_family: str = "count_down",
        generalization_category: str = "tool",
    ):
        if ramble_rate + verbose_rate + wrong_rate > 1.0:
            raise ValueError(
                "task.ramble_rate + task.verbose_rate + task.wrong_rate must be <= 1 "
                f"(got {ramble_rate} + {verbose_rate} + {wrong_rate})"
            )
        if generalization_family not in FAMILIES:
            raise ValueError(f"task.generalization_family: {generalization_family!r}; allowed: {', '.join(FAMILIES)}")
        if generalization_category not in CATEGORIES:
            raise ValueError(
                f"task.generalization_category: {generalization_category!r}; allowed: {', '.join(CATEGORIES)}"
            )
        if not 0.0 < heldout_share < 1.0:
            raise ValueError(f"task.heldout_share must be in (0, 1) (got {heldout_share})")
        self.seed = seed
        self.n = {"train": n_train_prompts, "heldout": n_heldout_prompts, "generalization": n_generalization_prompts}
        self.n_pretrain_docs = n_pretrain_docs
        self.rates = {"ramble": ramble_rate, "verbose": verbose_rate, "wrong": wrong_rate}
        self.labeler_noise = labeler_noise
        self.heldout_share = heldout_share
        self.generalization_family = generalization_family
        self.generalization_category = generalization_category
        self.train_families = [f for f in FAMILIES if f != generalization_family]
        self.seen_categories = [c for c in CATEGORIES if c != generalization_category]
        self.seen_words = [w for c in self.seen_categories for w in CATEGORIES[c].items]
        self.unseen_words = list(CATEGORIES[generalization_category].items)
        self._cache: dict[Any, Any] = {}

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

    def ideal_response(self, prompt: str) -> str:
        return ideal_answer(prompt)

    def labeler(self, seed: int, noise: float | None = None) -> SimulatedLabeler:
        """An independent simulated labeler per seed; `noise` overrides the configured level."""
        return SimulatedLabeler(seed, self.labeler_noise if noise is None else noise)

    def prompts(self, split: str) -> list[Prompt]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
        key = ("prompts", split)
        if key not in self._cache:
            self._cache[key] = [
                Prompt(f"{split}-{i:06d}", format_prompt(text)) for i, text in enumerate(self._instructions(split))
            ]
        return list(self._cache[key])

    def demonstrations(self) -> list[Demonstration]:
        return [d for d, _ in self.demonstrations_with_kinds()]

    def demonstrations_with_kinds(self) -> list[tuple[Demonstration, str]]:
        """Demonstrations with the demonstrator's flaw kind ("good", "ramble", "verbose", "wrong")."""
        if "demos" not in self._cache:
            rng = random.Random(f"demo-world/{self.seed}/demonstrations")
            out = []
            for p in self.prompts("train"):
                response, kind = self.demonstrate(p.prompt, rng)
                out.append((Demonstration(p.prompt_id, p.prompt, response), kind))
            self._cache["demos"] = out
        return list(self._cache["demos"])

    def pretraining_corpus(self, split: str) -> list[str]:
        """Web-like documents; "heldout" has 5 % as many documents as "train"."""
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown corpus split {split!r}; splits: train, heldout")
        key = ("corpus", split)
        if key not in self._cache:
            n = self.n_pretrain_docs if split == "train" else max(1, round(0.05 * self.n_pretrain_docs))
            rng = random.Random(f"demo-world/{self.seed}/corpus/{split}")
            self._cache[key] = [self._document(rng) for _ in range(n)]
        return list(self._cache[key])

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

    # ---- prompts ---------------------------------------------------------------------------

    def is_heldout_text(self, instruction: str) -> bool:
        """Whether an instruction text belongs to the held-out share of the prompt space."""
        return _hash_unit("heldout", self.seed, instruction) < self.heldout_share

    def _instructions(self, split: str) -> list[str]:
        rng = random.Random(f"demo-world/{self.seed}/prompts/{split}")
        n = self.n[split]
        out: list[str] = []
        if split == "train":
            while len(out) < n:
                text = self._instruction(rng, rng.choice(self.train_families), self.seen_categories)
                if not self.is_heldout_text(text):
                    out.append(text)
            return out
        used: set[str] = set()
        families = (
            self.train_families
            if split == "heldout"
            else [self.generalization_family] + [f for f in WORD_FAMILIES if f != self.generalization_family]
        )
        while len(out) < n:
            family = families[len(out) % len(families)]
            for tries in range(10_000):
                if split == "heldout":
                    text = self._instruction(rng, family, self.seen_categories)
                    ok = self.is_heldout_text(text)
                elif family == self.generalization_family:
                    text = self._instruction(rng, family, self.seen_categories)
                    ok = True
                else:
                    text = self._instruction(rng, family, [self.generalization_category], unseen=True)
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

    def _instruction(self, rng: random.Random, family: str, categories: Sequence[str], unseen: bool = False) -> str:
        """One instruction text of a family about `categories`. With `unseen` (the held-out category),
        a reverse prompt mixes at least one of its words with seen ones."""
        template = rng.choice(TEMPLATES[family])
        cat = CATEGORIES[rng.choice(list(categories))]
        word_pool = [w for c in categories for w in CATEGORIES[c].items]
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
            if unseen:  # at least one unseen word, the rest from anywhere
                ws = [rng.choice(word_pool)]
                ws += rng.sample([w for w in self.seen_words + word_pool if w not in ws], k - 1)
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

    # ---- demonstrator ----------------------------------------------------------------------

    def demonstrate(self, prompt: str, rng: random.Random, kind: str | None = None) -> tuple[str, str]:
        """A demonstrator's response to a prompt and its kind (drawn with the configured rates)."""
        if kind is None:
            u = rng.random()
            r, v, w = self.rates["ramble"], self.rates["verbose"], self.rates["wrong"]
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
            instr = self._instruction(rng, rng.choice(self.train_families), self.seen_categories)
            text = f"\nInstruction: {instr}"
            if rng.random() < 0.5:
                text += "\nResponse:"
            return text
        if mode < 0.8:
            return " . " + _sentence(rng, self.seen_categories, self.train_families)
        return " . " + _sentence(rng, self.seen_categories, self.train_families) + " . " + _sentence(
            rng, self.seen_categories, self.train_families
        )

    # ---- pretraining corpus ----------------------------------------------------------------

    def _document(self, rng: random.Random) -> str:
        all_cats = list(CATEGORIES)
        kind = rng.random()
        if kind < 0.2:  # a worksheet: instructions continued by more instructions, never answered
            header = rng.choice(["", "homework sheet", "exercises for class 3", "practice page", "lesson 4"])
            lines = [header] if header else []
            blank_responses = rng.random() < 0.6
            for _ in range(rng.randint(3, 7)):
                family = rng.choice(FAMILIES)
                lines.append("Instruction: " + self._instruction(rng, family, all_cats))
                if blank_responses:
                    lines.append("Response:")
            return "\n".join(lines)
        if kind < 0.3:  # a quiz page: questions with answers written out
            return "\n".join(_quiz_line(rng) for _ in range(rng.randint(2, 5)))
        sentences = [_sentence(rng, all_cats, FAMILIES) for _ in range(rng.randint(2, 6))]
        return " . ".join(sentences) + " ."


# --------------------------------------------------------------------------------------------
# Corpus sentences (facts of the world written as web-like text)
# --------------------------------------------------------------------------------------------

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


def _sentence(rng: random.Random, categories: Sequence[str], families: Sequence[str]) -> str:
    cat = CATEGORIES[rng.choice(list(categories))]
    pool = [w for c in categories for w in CATEGORIES[c].items]
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
        seq = " ".join(_sequence_range(b, a))
        return rng.choice((f"counting down from {b} to {a} : {seq}", f"the countdown went {seq} and go"))
    if kind == "count":
        a, b = _nums(rng)
        seq = " ".join(_sequence_range(a, b))
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


# --------------------------------------------------------------------------------------------
# Calibration and comparisons
# --------------------------------------------------------------------------------------------


def reference_pairs(world: DemoWorld, n_pairs: int) -> list[tuple[str, str, str]]:
    """The fixed calibration set: (prompt, a, b) with a != b, two demonstrator responses to one
    training-distribution prompt. A function of the world's seed only (not of any labeler)."""
    key = ("reference", n_pairs)
    if key in world._cache:
        return world._cache[key]
    rng = random.Random(f"demo-world/{world.seed}/reference")
    pairs: list[tuple[str, str, str]] = []
    while len(pairs) < n_pairs:
        text = world._instruction(rng, rng.choice(world.train_families), world.seen_categories)
        prompt = format_prompt(text)
        a, _ = world.demonstrate(prompt, rng)
        for _ in range(20):
            b, _ = world.demonstrate(prompt, rng)
            if b != a:
                pairs.append((prompt, a, b))
                break
    world._cache[key] = pairs
    return pairs


def _agree(x: float, y: float) -> float:
    """1 when two verdicts match, 0 when opposite, 0.5 when one of them is a tie."""
    return 1.0 - abs(x - y)


def labeler_agreement(world: DemoWorld, n_pairs: int = 8000, seed: int = 0, noise: float | None = None) -> dict:
    """Agreement of two independent labelers (seeds `seed`, `seed + 1`) with each other and of the
    first with the noiseless utility, on the fixed reference set."""
    la, lb = world.labeler(seed, noise), world.labeler(seed + 1, noise)
    ll = lu = 0.0
    pairs = reference_pairs(world, n_pairs)
    for prompt, a, b in pairs:
        pa, pb = la.prefer(prompt, a, b), lb.prefer(prompt, a, b)
        ua, ub = judge(prompt, a).utility, judge(prompt, b).utility
        pu = 1.0 if ua > ub else 0.0 if ua < ub else 0.5
        ll += _agree(pa, pb)
        lu += _agree(pa, pu)
    return {
        "labeler_labeler": ll / len(pairs),
        "labeler_utility": lu / len(pairs),
        "noise": la.noise,
        "n_pairs": len(pairs),
    }


def expected_agreement(world: DemoWorld, noise: float, n_pairs: int = 8000) -> float:
    """Labeler-labeler agreement on the reference set in expectation over labeler noise."""
    if noise <= 0:
        return 1.0
    total = 0.0
    for d in _reference_gaps(world, n_pairs):
        # P(a labeler prefers a) = Φ(d / (noise·√2)) = ½(1 + erf(d / (2·noise)))
        p = 0.5 * (1.0 + math.erf(d / (2.0 * noise)))
        total += p * p + (1.0 - p) * (1.0 - p)
    return total / n_pairs


def _reference_gaps(world: DemoWorld, n_pairs: int) -> list[float]:
    """Utility differences of the reference pairs."""
    return [judge(p, a).utility - judge(p, b).utility for p, a, b in reference_pairs(world, n_pairs)]


def calibrate_labeler_noise(world: DemoWorld, target: float = 0.726, n_pairs: int = 8000) -> float:
    """The labeler noise at which two labelers agree on `target` of the reference pairs (bisection)."""
    gaps = _reference_gaps(world, n_pairs)

    def agreement(noise: float) -> float:
        ps = [0.5 * (1.0 + math.erf(d / (2.0 * noise))) for d in gaps]
        return sum(p * p + (1.0 - p) * (1.0 - p) for p in ps) / len(ps)

    lo, hi = 1e-3, 10.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if agreement(mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


def demo_comparisons(world: DemoWorld, n: int, k: int = 4, seed: int = 0) -> list[Comparison]:
    """`n` comparisons of `k` different demonstrator responses to training prompts, ranked by the
    labeler of seed `seed`. Prompts whose demonstrator cannot produce 2 different responses are skipped;
    fewer than `k` are kept when it cannot produce `k`."""
    if not 2 <= k <= 9:
        raise ValueError(f"k must be in 2..9 (got {k})")
    rng = random.Random(f"demo-world/{world.seed}/comparisons/{seed}")
    labeler = world.labeler(seed)
    prompts = world.prompts("train")
    out: list[Comparison] = []
    order = list(range(len(prompts)))
    rng.shuffle(order)
    i = 0
    while len(out) < n and i < 4 * n + len(prompts):
        p = prompts[order[i % len(order)]]
        i += 1
        responses: list[str] = []
        for _ in range(20 * k):
            r, _ = world.demonstrate(p.prompt, rng)
            if r not in responses:
                responses.append(r)
                if len(responses) == k:
                    break
        if len(responses) < 2:
            continue
        out.append(Comparison(p.prompt_id, p.prompt, responses, labeler.rank(p.prompt, responses)))
    return out


def build(cfg: Any) -> DemoWorld:
    """The demo world of a `raylhf.configs.schema.TaskConfig`."""
    return DemoWorld(
        seed=cfg.seed,
        n_train_prompts=cfg.n_train_prompts,
        n_heldout_prompts=cfg.n_heldout_prompts,
        n_generalization_prompts=cfg.n_generalization_prompts,
        n_pretrain_docs=cfg.n_pretrain_docs,
        ramble_rate=cfg.ramble_rate,
        verbose_rate=cfg.verbose_rate,
        wrong_rate=cfg.wrong_rate,
        labeler_noise=cfg.labeler_noise,
        heldout_share=cfg.heldout_share,
        generalization_family=cfg.generalization_family,
        generalization_category=cfg.generalization_category,
    )


__all__ = [
    "CATEGORIES",
    "FAMILIES",
    "DemoWorld",
    "Judgement",
    "SimulatedLabeler",
    "Spec",
    "build",
    "calibrate_labeler_noise",
    "demo_comparisons",
    "expected_agreement",
    "format_prompt",
    "ideal_answer",
    "judge",
    "labeler_agreement",
    "parse_prompt",
    "reference_pairs",
    "response_words",
]

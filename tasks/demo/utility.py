"""The hidden utility of a response: `judge` (a `Judgement` per prompt and response) and
`ideal_answer` (a shortest correct response), with the utility's constants (`EXACT_BONUS`,
`EXTRA_WORD_COST`, ...).

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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from raylhf.tasks.demo.prompts import Spec, parse_prompt
from raylhf.tasks.demo.vocabulary import CATEGORIES, SEQUENCE_FAMILIES, response_words

# Utility constants (see the module docstring).
UNMATCHED_COST = 0.5  # per word inside the answer span that earned nothing, in units of 1/L
EXACT_BONUS = 0.25  # correct, complete and nothing continuing the answer
EXTRA_WORD_COST = 0.04  # per response word outside the answer span
EMPTY_UTILITY = -0.3  # an empty response
CASE_CREDIT = 0.5  # right word, wrong case
OFF_BY_ONE_CREDIT = 0.25  # add: the sum off by one
WRONG_LETTER_CREDIT = 0.3  # starts_with: an item of the category with another first letter

PUNCTUATION = frozenset(",.:;!?-")  # inside an answer span these cost as extra words, not as wrong ones


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


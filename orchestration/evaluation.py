"""Judging policies and reward models on held-out prompts (the numbers in every report)."""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

from raylhf.contracts.protocols import Labeler, Task
from raylhf.contracts.records import Prompt


def untied_pairs(order: Sequence[int], tied: Sequence[bool] | None = None) -> list[tuple[int, int]]:
    """`(w, l)` of every pair the ranking `order` (indices best -> worst) puts one above the other: C(K,2)
    without ties; with `tied` (`tied[i]`: positions i and i+1 equally good, ties chaining), the pairs inside a
    tie group say neither is better and are left out."""
    return [(order[i], order[j]) for i, j in combinations(range(len(order)), 2)
            if tied is None or not all(tied[i:j])]


def pairwise_agreement(scores: Sequence[Sequence[float]], rankings: Sequence[Sequence[int]],
                       lengths: Sequence[Sequence[int]] | None = None,
                       ties: Sequence[Sequence[bool] | None] | None = None) -> float:
    """Fraction of ranked pairs (w above l) with score[w] > score[l]; a tie of the scores counts half.

    `scores[g]` are the scores of group g's responses; `rankings[g]` lists its indices best -> worst, and
    `ties[g]` (optional) its labeler's ties, whose pairs do not count (`untied_pairs`).
    With `lengths` (`lengths[g][i]`: length of group g's response i), only pairs of two responses of
    equal length count: length then cannot explain the agreement, so a score that has learned only
    "shorter is better" is at chance there (nan when no such pair exists).
    """
    agree = total = 0.0
    for g, (s, order) in enumerate(zip(scores, rankings)):
        for w, l in untied_pairs(order, ties[g] if ties is not None else None):
            if lengths is not None and lengths[g][w] != lengths[g][l]:
                continue
            agree += 1.0 if s[w] > s[l] else 0.5 if s[w] == s[l] else 0.0
            total += 1
    return agree / total if total else float("nan")


def split_by_group(flat: Sequence[float], sizes: Sequence[int]) -> list[list[float]]:
    out, i = [], 0
    for n in sizes:
        out.append(list(flat[i : i + n]))
        i += n
    return out


def ranked_pairs(rankings: Sequence[Sequence[int]], ties: Sequence[Sequence[bool] | None] | None = None
                 ) -> list[tuple[int, int, int]]:
    """`(group, winner, loser)` of every pair the rankings order (C(K,2) per group of K, less its tied pairs)."""
    return [(g, w, l) for g, order in enumerate(rankings)
            for w, l in untied_pairs(order, ties[g] if ties is not None else None)]


def agreement_by(scores: Sequence[Sequence[float]], pairs: Sequence[tuple[int, int, int]],
                 labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per label (one per pair of `ranked_pairs`): the fraction of its pairs `scores` order as the ranking does
    (a tie counts half, as in `pairwise_agreement`) and how many pairs it has."""
    agree: dict[str, float] = {}
    total: dict[str, int] = {}
    for (g, w, l), label in zip(pairs, labels, strict=True):
        s = scores[g]
        agree[label] = agree.get(label, 0.0) + (1.0 if s[w] > s[l] else 0.5 if s[w] == s[l] else 0.0)
        total[label] = total.get(label, 0) + 1
    return {label: {"accuracy": agree[label] / total[label], "pairs": total[label]} for label in sorted(total)}


def agreement_table(scores: dict[str, Sequence[Sequence[float]]], pairs: Sequence[tuple[int, int, int]],
                    labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """`agreement_by` of several scorers side by side: per label, its number of pairs and each scorer's
    accuracy on them (`{label: {"pairs": n, name: accuracy, ...}}`), labels sorted."""
    table: dict[str, dict[str, float]] = {}
    for name, grouped in scores.items():
        for label, v in agreement_by(grouped, pairs, labels).items():
            table.setdefault(label, {"pairs": v["pairs"]})[name] = v["accuracy"]
    return table


def win_rate(labeler: Labeler, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> float:
    """Fraction of prompts on which the labeler prefers response a over b; ties count half."""
    prefs = [labeler.prefer(p.prompt, ra, rb) for p, ra, rb in zip(prompts, a, b)]
    return float(np.mean(prefs)) if prefs else float("nan")


def kl_estimate(logprobs: Sequence[float], ref_logprobs: Sequence[float]) -> float:
    """KL(π || π_ref) per sequence, estimated on samples y ~ π: the mean over prompts of
    log π(y|x) − log π_ref(y|x), each the sum over the response's tokens (`logprobs[i]`, `ref_logprobs[i]` of
    sample i). It is the quantity PPO-ptx's KL penalty holds down (InstructGPT Eq. 2's β term, per sequence).
    nan without samples."""
    lp, ref = np.asarray(logprobs, dtype=np.float64), np.asarray(ref_logprobs, dtype=np.float64)
    return float(np.mean(lp - ref)) if len(lp) else float("nan")


def instruction_following(task: Task, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, float]:
    """Per-family fraction of responses that do what the prompt asks, plus `all`."""
    by_family: dict[str, list[bool]] = {}
    for p, r in zip(prompts, responses):
        by_family.setdefault(task.family(p.prompt), []).append(task.follows_instruction(p.prompt, r))
    rates = {f: float(np.mean(v)) for f, v in sorted(by_family.items())}
    rates["all"] = float(np.mean([x for v in by_family.values() for x in v])) if by_family else float("nan")
    return rates


def mean_utility(task: Task, prompts: Sequence[Prompt], responses: Sequence[str]) -> float:
    return float(np.mean([task.utility(p.prompt, r) for p, r in zip(prompts, responses)]))

"""Judging policies and reward models on held-out prompts (the numbers in every report)."""

from __future__ import annotations

from itertools import combinations
from typing import Sequence


def pairwise_agreement(scores: Sequence[Sequence[float]], rankings: Sequence[Sequence[int]],
                       lengths: Sequence[Sequence[int]] | None = None) -> float:
    """Fraction of ranked pairs (w above l) with score[w] > score[l]; a tie counts half.

    `scores[g]` are the scores of group g's responses; `rankings[g]` lists its indices best -> worst.
    With `lengths` (`lengths[g][i]`: length of group g's response i), only pairs of two responses of
    equal length count: length then cannot explain the agreement, so a score that has learned only
    "shorter is better" is at chance there (nan when no such pair exists).
    """
    agree = total = 0.0
    for g, (s, order) in enumerate(zip(scores, rankings)):
        for i, j in combinations(range(len(order)), 2):
            w, l = order[i], order[j]
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


def ranked_pairs(rankings: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """`(group, winner, loser)` of every pair the rankings order (C(K,2) per group of K)."""
    return [(g, order[i], order[j]) for g, order in enumerate(rankings) for i, j in combinations(range(len(order)), 2)]


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

"""Judging policies and reward models on held-out prompts (the numbers in every report)."""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np


def pairwise_agreement(scores: Sequence[Sequence[float]], rankings: Sequence[Sequence[int]]) -> float:
    """Fraction of ranked pairs (w above l) with score[w] > score[l]; a tie counts half.

    `scores[g]` are the scores of group g's responses; `rankings[g]` lists its indices best -> worst.
    """
    agree = total = 0.0
    for s, order in zip(scores, rankings):
        for i, j in combinations(range(len(order)), 2):
            w, l = order[i], order[j]
            agree += 1.0 if s[w] > s[l] else 0.5 if s[w] == s[l] else 0.0
            total += 1
    return agree / total if total else float("nan")


def split_by_group(flat: Sequence[float], sizes: Sequence[int]) -> list[list[float]]:
    out, i = [], 0
    for n in sizes:
        out.append(list(flat[i : i + n]))
        i += n
    return out

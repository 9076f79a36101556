"""Example programmatic rewards, usable as `function` / `token_function` reward sources.

    reward:
      sources:
        - {kind: rm, weight: 1.0}
        - {kind: token_function, path: "raylhf.reward_service.rewards:length_penalty", weight: 1.0,
           kwargs: {target_tokens: 24, coef: 0.05}}

Verifiable-reward runs plug a task's utility in the same way: a batched `function` source over
(prompt, response) text, e.g. the demo task's utility.
"""

from __future__ import annotations

from typing import Sequence


def length_penalty(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    target_tokens: int = 32,
    coef: float = 0.01,
) -> list[float]:
    """`-coef * max(0, T - target_tokens)` per response of T tokens (EOS counted): discourages rambling."""
    return [-coef * max(0, len(r) - target_tokens) for r in response_ids]


def word_count_penalty(
    prompts: Sequence[str], responses: Sequence[str], target_words: int = 16, coef: float = 0.01
) -> list[float]:
    """Text form of `length_penalty`: `-coef * max(0, words - target_words)` per decoded response."""
    return [-coef * max(0, len(r.split()) - target_words) for r in responses]

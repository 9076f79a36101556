"""Sampling responses through a generation engine, collecting rankings and judging policies.

`engine` is anything with the `raylhf.contracts.protocols.GenerationEngine.generate` signature: an
in-process engine, or `actors` handles behind the same call.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from raylhf.contracts.formatting import decode_response, encode_prompt
from raylhf.contracts.protocols import GenerationRequest, Labeler, RequestError, SamplingSpec
from raylhf.contracts.records import Comparison, Prompt, Rollout

log = logging.getLogger(__name__)


def sample_rollouts(engine, tokenizer, prompts: Sequence[Prompt], sampling: SamplingSpec, batch_size: int = 256,
                    desc: str = "sampling") -> list[list[Rollout]]:
    """`sampling.n` rollouts per prompt (an empty list for a prompt the engine refused, logged)."""
    out: list[list[Rollout]] = []
    refused = 0
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True, leave=False)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        requests = [GenerationRequest(p.prompt_id, tuple(encode_prompt(tokenizer, p.prompt))) for p in chunk]
        for p, result in zip(chunk, engine.generate(requests, sampling)):
            if isinstance(result, RequestError):
                refused += 1
                log.warning("prompt %s refused by the engine: %s", p.prompt_id, result.reason)
                out.append([])
            else:
                out.append(result)
        bar.update(len(chunk))
    bar.close()
    if refused:
        log.warning("%d of %d prompts were refused by the engine", refused, len(prompts))
    return out


def sample_texts(engine, tokenizer, prompts: Sequence[Prompt], sampling: SamplingSpec, desc: str = "sampling"
                 ) -> list[list[str]]:
    return [[decode_response(tokenizer, r.response_ids) for r in rs]
            for rs in sample_rollouts(engine, tokenizer, prompts, sampling, desc=desc)]


def rank_into_comparisons(prompts: Sequence[Prompt], responses: Sequence[Sequence[str]], labeler: Labeler,
                          k: int) -> list[Comparison]:
    """Up to `k` distinct responses per prompt, ranked by the labeler. Prompts with < 2 distinct are skipped."""
    comparisons = []
    for p, rs in zip(prompts, responses):
        distinct = list(dict.fromkeys(rs))[:k]
        if len(distinct) < 2:
            continue
        comparisons.append(Comparison(p.prompt_id, p.prompt, distinct, labeler.rank(p.prompt, distinct)))
    return comparisons


def win_rate(labeler: Labeler, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> float:
    """Fraction of prompts on which the labeler prefers response a over b; ties count half."""
    prefs = [labeler.prefer(p.prompt, ra, rb) for p, ra, rb in zip(prompts, a, b)]
    return float(np.mean(prefs)) if prefs else float("nan")


def instruction_following(task, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, float]:
    """Per-family fraction of responses that do what the prompt asks, plus `all`."""
    by_family: dict[str, list[bool]] = {}
    for p, r in zip(prompts, responses):
        by_family.setdefault(task.family(p.prompt), []).append(task.follows_instruction(p.prompt, r))
    rates = {f: float(np.mean(v)) for f, v in sorted(by_family.items())}
    rates["all"] = float(np.mean([x for v in by_family.values() for x in v])) if by_family else float("nan")
    return rates


def mean_utility(task, prompts: Sequence[Prompt], responses: Sequence[str]) -> float:
    return float(np.mean([task.utility(p.prompt, r) for p, r in zip(prompts, responses)]))

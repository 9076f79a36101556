"""What both engines agree on: which requests are served, per-request seeds, finish reasons.

A bad request (empty prompt, out-of-vocabulary token, too long for the context, invalid sampling
value) is refused with a `RequestError` naming the reason; the rest of its batch is served.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

from raylhf.configs.schema import GenerationConfig
from raylhf.contracts.protocols import GenerationRequest, SamplingSpec


def sampling_spec(cfg: GenerationConfig, seed: int | None = None) -> SamplingSpec:
    """The SamplingSpec of RL rollouts from the `generation` config section."""
    return SamplingSpec(
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        stop_token_ids=tuple(cfg.stop_token_ids),
        seed=seed,
    )


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def sampling_problem(s: SamplingSpec, vocab_size: int) -> str | None:
    """Why a sampling spec cannot be served, or None."""
    if not _is_int(s.n) or s.n < 1:
        return f"n must be an integer >= 1, got {s.n!r}"
    if not _is_number(s.temperature) or s.temperature < 0:
        return f"temperature must be a finite number >= 0, got {s.temperature!r}"
    if s.temperature == 0 and s.n > 1:
        return f"n={s.n} samples need temperature > 0 (greedy samples of a prompt are identical)"
    if not _is_number(s.top_p) or not 0 < s.top_p <= 1:
        return f"top_p must be in (0, 1], got {s.top_p!r}"
    if not _is_int(s.max_new_tokens) or s.max_new_tokens < 1:
        return f"max_new_tokens must be an integer >= 1, got {s.max_new_tokens!r}"
    bad_stop = [t for t in s.stop_token_ids if not _is_int(t) or not 0 <= t < vocab_size]
    if bad_stop:
        return f"stop_token_ids {bad_stop} are not token ids of this model (vocabulary {vocab_size})"
    if s.seed is not None and not _is_int(s.seed):
        return f"seed must be an integer or None, got {s.seed!r}"
    return None


def request_problem(req: GenerationRequest, s: SamplingSpec, context_len: int, vocab_size: int) -> str | None:
    """Why a request cannot be served under sampling spec `s`, or None.

    A prompt must leave room for `max_new_tokens` in the context, so that a response is never cut
    short by the context rather than by its own length limit.
    """
    problem = sampling_problem(s, vocab_size)
    if problem:
        return problem
    ids: Sequence[int] = req.prompt_ids
    if len(ids) == 0:
        return "empty prompt"
    bad = [t for t in ids if not _is_int(t) or not 0 <= t < vocab_size]
    if bad:
        return f"prompt has token ids outside the vocabulary of {vocab_size}: {bad[:5]}"
    if len(ids) + s.max_new_tokens > context_len:
        return (
            f"prompt of {len(ids)} tokens + max_new_tokens {s.max_new_tokens} exceeds "
            f"the model's context of {context_len} tokens"
        )
    return None


def request_seed(seed: int, prompt_id: str) -> int:
    """A 31-bit seed for one request, stable across processes (unlike `hash`) and batch order."""
    digest = hashlib.blake2b(f"{seed}/{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


def finish_reason(response_ids: Sequence[int], eos_ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """"eos" or "stop" when the last token ended the response, else "length"."""
    if response_ids and response_ids[-1] in eos_ids:
        return "eos"
    if response_ids and response_ids[-1] in stop_ids:
        return "stop"
    return "length"

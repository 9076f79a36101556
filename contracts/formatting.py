"""How prompts and responses become token ids — one convention for every component.

Prompt and response are tokenised separately (`[BOS] prompt` then `response [EOS]`) so the
token boundary between them is the same whether a sequence was written by a labeler, sampled
by a generator or scored by the reward model. A BPE tokenizer would otherwise merge across it.
`tokenizer` is any Hugging Face tokenizer (duck-typed: `encode`, `decode`, bos/eos ids).
"""

from __future__ import annotations

from typing import Any, Sequence


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]


def encode_response(tokenizer: Any, response: str, add_eos: bool = True) -> list[int]:
    ids = tokenizer.encode(response, add_special_tokens=False)
    return [*ids, tokenizer.eos_token_id] if add_eos else ids


def decode_response(tokenizer: Any, response_ids: Sequence[int]) -> str:
    """Text of a response, without the EOS / padding tokens."""
    return tokenizer.decode(list(response_ids), skip_special_tokens=True)

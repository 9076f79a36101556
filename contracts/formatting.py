"""How prompts and responses become token ids — one convention for every component.

A prompt is rendered to text, then tokenised; a response is tokenised on its own and ends with the
end-of-turn token. Tokenising the two separately keeps the token boundary between them the same whether a
sequence was written by a labeler, sampled by a generator or scored by the reward model (a BPE tokenizer
would otherwise merge across it).

Rendering (`PromptFormat`):
- with a chat template (the tokenizer's own under `data.chat_template: auto`, or a Jinja file), the prompt's
  conversation (`messages`, or `prompt` as one user turn) is rendered with `add_generation_prompt=True` and
  tokenised without adding special tokens: the template writes BOS itself when the model has one, as
  `vllm serve`'s chat endpoint and `transformers` pipelines do;
- without one (`data.chat_template: none`, or a base model with no template), `prompt` goes through
  `data.input_template` and BOS is prepended exactly when the tokenizer itself adds it
  (`tokenizer(text)`), so a text-completion request to the saved checkpoint sees the same ids.

The end of a response is the template's end-of-turn token (what follows an assistant turn's content, e.g.
`<|im_end|>` for ChatML), or EOS. Generation stops at EOS, end-of-turn and the checkpoint's generation-config
EOS ids. `tokenizer` is any Hugging Face tokenizer (duck-typed: `encode`, `decode`, `apply_chat_template`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from raylhf.contracts.protocols import SamplingSpec

# The placeholder of `data.input_template`.
PROMPT_FIELD = "{prompt}"
# An assistant turn's content when finding what a template writes after it (the end-of-turn token).
_PROBE = "\u2063raylhf-probe\u2063"


def adds_bos(tokenizer: Any) -> bool:
    """Whether `tokenizer(text)` starts the ids with BOS (Llama does; GPT-2 and Qwen2 do not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]


def resolve_chat_template(tokenizer: Any, chat_template: str = "auto") -> str | None:
    """The Jinja text of `data.chat_template`: `auto` is the tokenizer's own (None when it has none), `none` is
    None, anything else a file to read."""
    if chat_template == "none":
        return None
    if chat_template == "auto":
        return getattr(tokenizer, "chat_template", None) or None
    path = Path(chat_template)
    if not path.is_file():
        raise FileNotFoundError(f"data.chat_template: no such file {chat_template!r} (use auto, none or a .jinja file)")
    return path.read_text(encoding="utf-8")


def end_of_turn_id(tokenizer: Any, template: str | None) -> int:
    """The token that closes an assistant turn under `template`: the first token the template writes after
    an assistant turn's content when that is a special token, else EOS."""
    eos = tokenizer.eos_token_id
    if template is None:
        return eos
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(turns, chat_template=template, tokenize=False)
    after = text[text.rfind(_PROBE) + len(_PROBE):] if _PROBE in text else ""
    ids = tokenizer.encode(after, add_special_tokens=False) if after else []
    special = set(getattr(tokenizer, "all_special_ids", ())) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[0] if ids and ids[0] in special else eos


class PromptFormat:
    """Token ids of prompts and responses for one tokenizer under `data.chat_template` / `data.input_template`.

    Records (`Prompt`, `Demonstration`, `Comparison`) are passed whole: their `messages` (a conversation) or
    `prompt` (text) is what gets rendered."""

    def __init__(self, tokenizer: Any, chat_template: str = "auto", input_template: str = PROMPT_FIELD):
        if PROMPT_FIELD not in input_template:
            raise ValueError(f"data.input_template: {input_template!r} has no {PROMPT_FIELD} placeholder")
        self.tokenizer = tokenizer
        self.template = resolve_chat_template(tokenizer, chat_template)
        self.input_template = input_template
        self.bos: list[int] = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
        self.end_of_turn = end_of_turn_id(tokenizer, self.template)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Tokens that end a response besides the checkpoint's generation-config EOS ids."""
        return tuple(dict.fromkeys(i for i in (self.tokenizer.eos_token_id, self.end_of_turn) if i is not None))

    def sampling(self, spec: SamplingSpec) -> SamplingSpec:
        """`spec` that also stops at this format's end-of-turn and EOS tokens."""
        return dataclasses.replace(spec, stop_token_ids=tuple(dict.fromkeys((*spec.stop_token_ids, *self.stop_ids))))

    def conversation(self, record: Any) -> list[dict[str, str]]:
        messages = getattr(record, "messages", None)
        return list(messages) if messages else [{"role": "user", "content": record.prompt}]

    def prompt_text(self, record: Any) -> str:
        """The prompt as the model reads it, special tokens included (what a text-completion request sends,
        with BOS left to the tokenizer when there is no template)."""
        if self.template is not None:
            return self.tokenizer.apply_chat_template(self.conversation(record), chat_template=self.template,
                                                      tokenize=False, add_generation_prompt=True)
        if getattr(record, "messages", None) and len(record.messages) > 1:
            raise ValueError("field 'messages': a conversation of several turns needs a chat template "
                             "(data.chat_template: auto with a tokenizer that has one, or a .jinja file)")
        return self.input_template.replace(PROMPT_FIELD, record.prompt)

    def prompt_ids(self, record: Any) -> list[int]:
        text = self.prompt_text(record)
        prefix = [] if self.template is not None else self.bos
        return [*prefix, *self.tokenizer.encode(text, add_special_tokens=False)]

    def response_ids(self, response: str, end: bool = True) -> list[int]:
        ids = self.tokenizer.encode(response, add_special_tokens=False)
        return [*ids, self.end_of_turn] if end else ids

    def decode_response(self, response_ids: Sequence[int]) -> str:
        return decode_response(self.tokenizer, response_ids)


def decode_response(tokenizer: Any, response_ids: Sequence[int]) -> str:
    """Text of a response, without the end-of-turn / EOS / padding tokens."""
    return tokenizer.decode(list(response_ids), skip_special_tokens=True)


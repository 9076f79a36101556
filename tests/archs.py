"""Tiny random checkpoints of three Hugging Face architectures, for tests that must not assume Llama.

`build_tiny_checkpoint(arch, out_dir, corpus)` writes a model, its tokenizer and a generation config in
HF format (loadable by `AutoModelForCausalLM` / `AutoTokenizer` and by vLLM), built from configs with
no download. Each reproduces what makes its family different for an RLHF system:

- `llama`: untied LM head; the tokenizer adds BOS when encoding (a `TemplateProcessing` post-processor,
  as Llama 3's tokenizer.json has) and a Llama-3-like chat template writes BOS itself, with header
  special tokens and `<|eot_id|>` closing a turn.
- `qwen2`: no BOS token at all, tied embeddings, q/k/v biases, grouped-query attention (2 heads, 1 KV
  head), a ChatML template, EOS `<|im_end|>`, pad `<|endoftext|>` and a 32k context (as Qwen2 ships).
  `AutoTokenizer` loads it as transformers' `Qwen2Tokenizer`, which splits text with Qwen2's own
  pre-tokenizer (digits one by one), as it does for a real Qwen2 checkpoint.
- `gpt2`: learned positions, Conv1D layers (weights stored [in, out]), `transformer.` names,
  BOS = EOS = `<|endoftext|>`, no pad token, no chat template (`GPT2_CHAT_TEMPLATE` is one to pass as a
  file, `data.chat_template: <file.jinja>`), the family's dropout defaults (0.1).

All have head_dim 64 (vLLM's CPU attention rejects smaller), 2 layers, hidden size 128, and a
byte-level BPE vocabulary trained on `corpus` with the family's special tokens added as special tokens.
The generation config's `eos_token_id` lists EOS and the end-of-turn token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

Arch = Literal["llama", "qwen2", "gpt2"]
ARCHS: tuple[Arch, ...] = ("llama", "qwen2", "gpt2")

HIDDEN, LAYERS, HEADS, HEAD_DIM = 128, 2, 2, 64
VOCAB_SIZE = 512  # BPE target; a small corpus may give fewer merges
# At transformers' default (0.02) the tied random models (Qwen2, GPT-2) answer every prompt greedily with one
# repeated token; at 0.1 greedy paths vary with the prompt, so comparing two engines' outputs can fail.
INIT_RANGE = 0.1

# Llama 3's template, without the date header of the real one: BOS, then per turn a header and `<|eot_id|>`.
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# ChatML, as Qwen2's (without its default system message).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ChatML's shape with the one special token GPT-2 has: a role line, the content, `<|endoftext|>` ending the
# turn (so end-of-turn = EOS). A user hands it over as a file; the tokenizer itself has no template.
GPT2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ':\n' + message['content'] + '<|endoftext|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
)

# Per family: special tokens (in id order, first ids of the vocabulary), the tokenizer's roles, the
# end-of-turn token and the chat template stored with the tokenizer.
_SPECIALS = {
    "llama": dict(tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>"],
                  bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, end_of_turn="<|eot_id|>",
                  template=LLAMA_CHAT_TEMPLATE),
    "qwen2": dict(tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  bos=None, eos="<|im_end|>", pad="<|endoftext|>", end_of_turn="<|im_end|>", template=CHATML_TEMPLATE),
    "gpt2": dict(tokens=["<|endoftext|>"],
                 bos="<|endoftext|>", eos="<|endoftext|>", pad=None, end_of_turn="<|endoftext|>", template=None),
}


def build_tokenizer(arch: Arch, corpus: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, with `arch`'s special tokens, roles and template."""
    spec = _SPECIALS[arch]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=spec["tokens"])
    backend = bpe._tokenizer
    if arch == "llama":
        # Encoding with add_special_tokens=True prepends BOS, as Llama 3's tokenizer does.
        bos = spec["bos"]
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, backend.token_to_id(bos))]),
        ])
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)  # adds no token
    roles = {k: spec[k] for k in ("bos", "eos", "pad") if spec[k] is not None}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="right", **{f"{k}_token": v
                                                                                         for k, v in roles.items()})
    if arch == "gpt2":
        tokenizer.unk_token = spec["eos"]  # as GPT-2 ships
    if spec["template"] is not None:
        tokenizer.chat_template = spec["template"]
    return tokenizer


def _config(arch: Arch, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    spec = _SPECIALS[arch]
    ids = {k: None if spec[k] is None else tokenizer.convert_tokens_to_ids(spec[k]) for k in ("bos", "eos", "pad")}
    vocab = len(tokenizer)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
                           max_position_embeddings=512, rope_theta=500000.0, tie_word_embeddings=False,
                           bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=None)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=1, max_position_embeddings=32768,
                           rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                           bos_token_id=None, eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=256, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                          bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=None)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def build_tiny_checkpoint(arch: Arch, out_dir: str | os.PathLike, corpus: list[str], seed: int = 0,
                          dtype: str = "float32") -> Path:
    """Write a randomly initialised `arch` model (weights in `dtype`), its tokenizer and generation config to
    `out_dir`; returns the path."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(arch, corpus)
    config = _config(arch, tokenizer)
    config.initializer_range = INIT_RANGE
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(getattr(torch, dtype))
    stops = [tokenizer.convert_tokens_to_ids(_SPECIALS[arch][k]) for k in ("eos", "end_of_turn")]
    if arch == "qwen2":
        stops.append(tokenizer.pad_token_id)  # `<|endoftext|>` ends a document, as Qwen2's generation config says
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id,
                                               eos_token_id=list(dict.fromkeys(stops)))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

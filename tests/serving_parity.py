"""Greedy answers of a saved policy checkpoint from every way it is served: raylhf's generator actors (the
prompt ids `PromptFormat` renders), transformers on the checkpoint as it is (its own chat template and
generation config), and vLLM's `chat` and `generate` on the checkpoint as it is (its tokenizer, its template).

A checkpoint serves as trained when all of them give the same tokens."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from raylhf.configs.loader import load_config
from raylhf.contracts.protocols import SamplingSpec
from raylhf.contracts.records import Prompt
from raylhf.orchestration.fleet import policy_fleets
from raylhf.orchestration.preflight import load_format
from raylhf.orchestration.ray_runtime import init_ray
from raylhf.orchestration.sample_and_rank import sample_rollouts

MAX_NEW_TOKENS = 16


def _trim(ids: Sequence[int], stops: set[int]) -> list[int]:
    """The answer up to and including its first stop token (engines differ in whether they report it)."""
    out = []
    for i in ids:
        out.append(int(i))
        if i in stops:
            break
    return [i for i in out if i not in stops]


def conversation(p: Prompt) -> list[dict[str, str]]:
    return list(p.messages) if p.messages else [{"role": "user", "content": p.prompt}]


def greedy_everywhere(checkpoint: Path, prompts: list[Prompt], overrides: Sequence[str] = ()) -> dict[str, list[list[int]]]:
    """Per way of serving, the greedy answer ids (stop token dropped) to each prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from vllm import LLM, SamplingParams

    cfg = load_config("tiny", ["generation.cpus=[]", "reward.cpus=[]", "ppo.cpus=[]", *overrides])
    fmt = load_format(cfg, checkpoint)
    stops = set(fmt.stop_ids) | set(_generation_eos(checkpoint))
    out: dict[str, list[list[int]]] = {}

    init_ray(cfg.ray)
    greedy = SamplingSpec(n=1, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS, seed=0)
    for _, _, fleet in policy_fleets(cfg.generation, {"policy": checkpoint}, seed=0, trust_remote_code=False,
                                     name_prefix="parity"):
        out["generator actors"] = [_trim(rs[0].response_ids, stops) for rs in sample_rollouts(fleet, fmt, prompts, greedy)]

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    generation = GenerationConfig.from_pretrained(checkpoint)
    answers = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(conversation(p), add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")["input_ids"]
        with torch.no_grad():
            full = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=MAX_NEW_TOKENS, generation_config=generation,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(_trim(full[0, ids.shape[1]:].tolist(), stops))
    out["transformers chat template"] = answers

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    llm = LLM(model=str(checkpoint), dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 * 1024 * 1024,
              max_model_len=-1, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    try:
        chats = llm.chat([conversation(p) for p in prompts], params, use_tqdm=False)
        out["vllm chat"] = [_trim(r.outputs[0].token_ids, stops) for r in chats]
        # A text-completion request: the rendered prompt as text; BOS is the tokenizer's to add.
        texts = [fmt.prompt_text(p) for p in prompts]
        if fmt.template is not None and fmt.bos:
            texts = [t.removeprefix(tokenizer.bos_token) for t in texts]
        completions = llm.generate(texts, params, use_tqdm=False)
        out["vllm generate"] = [_trim(r.outputs[0].token_ids, stops) for r in completions]
    finally:
        del llm
    return out


def _generation_eos(checkpoint: Path) -> list[int]:
    from raylhf.actors.checkpoint import eos_token_ids

    return list(eos_token_ids(checkpoint))


def assert_all_agree(answers: dict[str, list[list[int]]]) -> None:
    names = list(answers)
    reference = answers[names[0]]
    for name in names[1:]:
        for i, (a, b) in enumerate(zip(reference, answers[name])):
            assert a == b, f"prompt {i}: {names[0]} answered {a}, {name} answered {b}"
    assert any(reference), f"every greedy answer is empty (nothing compared): {reference}"

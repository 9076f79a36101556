import json
import os
import subprocess
import sys

import pytest
import torch

from raylhf.learners.models import build_causal_lm, count_parameters, load_causal_lm, load_tokenizer


class _Vocab:
    """A stand-in tokenizer of a given size, for counting preset parameters."""

    def __init__(self, n):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, 1, 2, 0

    def __len__(self):
        return self.n


@pytest.mark.parametrize("preset,lo,hi", [("tiny", 0.8e6, 1.3e6), ("small", 8e6, 12e6)])
def test_preset_sizes(preset, lo, hi):
    model = build_causal_lm(preset, _Vocab(1024), max_position_embeddings=256)
    assert lo < count_parameters(model) < hi
    assert model.config.head_dim >= 32  # vLLM's CPU attention rejects 16


def test_tokenizer_and_model_reload_with_transformers(tiny_checkpoint):
    tok = load_tokenizer(tiny_checkpoint)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok.encode("add 2 and 5 : 7", add_special_tokens=False)
    assert tok.decode(ids) == "add 2 and 5 : 7"
    model = load_causal_lm(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        logits = model(torch.tensor([[1, *ids]])).logits
    assert logits.shape == (1, len(ids) + 1, len(tok))


VLLM_SCRIPT = r"""
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(model=sys.argv[1], enforce_eager=True, dtype="float32", max_model_len=128,
          kv_cache_memory_bytes=32 << 20, seed=0)
out = llm.generate([TokensPrompt(prompt_token_ids=[1, 5, 6, 7])], SamplingParams(max_tokens=8, temperature=0.0))
print("RESULT", json.dumps(list(out[0].outputs[0].token_ids)))
"""


@pytest.mark.slow  # starts a vLLM engine
def test_vllm_loads_the_checkpoint_and_matches_transformers_greedy(tiny_checkpoint):
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    out = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(tiny_checkpoint)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    vllm_ids = json.loads(out.stdout.split("RESULT", 1)[1])
    model = load_causal_lm(tiny_checkpoint, device="cpu")
    hf = model.generate(torch.tensor([[1, 5, 6, 7]]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    # A random model has near-tied logits; the first tokens must agree exactly.
    assert vllm_ids[:4] == hf[0, 4:8].tolist()

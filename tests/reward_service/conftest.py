"""Fixtures for the reward service: a random scalar-head reward model built from the tiny checkpoint,
and rollouts of realistic shape (prompt with BOS, response ending in EOS)."""

from __future__ import annotations

import random

import pytest


def _save_rm(auto_cls, tiny_checkpoint, out, seed):
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    rm = auto_cls.from_pretrained(tiny_checkpoint, num_labels=1, use_safetensors=True)
    # A larger head than the default init so scores differ visibly between sequences.
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    if rm.score.bias is not None:
        torch.nn.init.constant_(rm.score.bias, 0.3)
    rm.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def rm_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The RM stage's format: a one-label `LlamaForTokenClassification` (scalar + bias at every position)
    on the tiny LM's body, with a random head."""
    from transformers import AutoModelForTokenClassification

    return _save_rm(AutoModelForTokenClassification, tiny_checkpoint, tmp_path_factory.mktemp("tiny_rm"), seed=1)


@pytest.fixture(scope="session")
def seqcls_rm_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The other common format: a one-label `LlamaForSequenceClassification` (no bias)."""
    from transformers import AutoModelForSequenceClassification

    return _save_rm(AutoModelForSequenceClassification, tiny_checkpoint, tmp_path_factory.mktemp("tiny_rm_seq"), seed=2)


@pytest.fixture(scope="session")
def vocab(tiny_checkpoint):
    """(bos, eos, number of token ids the tiny models accept)."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    return tok.bos_token_id, tok.eos_token_id, AutoConfig.from_pretrained(tiny_checkpoint).vocab_size


@pytest.fixture(scope="session")
def make_rollouts(vocab):
    """make_rollouts(n, seed, prompt_len=(lo, hi), response_len=(lo, hi)) -> list[Rollout] with unique sample ids."""
    from raylhf.contracts.records import Rollout

    bos, eos, n_vocab = vocab
    specials = {bos, eos}
    content = [i for i in range(n_vocab) if i not in specials]

    def make(n: int, seed: int = 0, prompt_len=(8, 20), response_len=(4, 40), prefix: str = "s"):
        rng = random.Random(seed)
        out = []
        for i in range(n):
            p, t = rng.randint(*prompt_len), rng.randint(*response_len)
            response = [rng.choice(content) for _ in range(t - 1)] + [eos]
            out.append(
                Rollout(
                    prompt_id=f"p{seed}-{i}",
                    prompt_ids=[bos] + [rng.choice(content) for _ in range(p - 1)],
                    response_ids=response,
                    logprobs=[-1.0] * t,
                    policy_version=0,
                    finish_reason="eos",
                    t_generated=1.0,
                    sample_id=f"{prefix}{seed}-{i}",
                )
            )
        return out

    return make


@pytest.fixture(scope="session")
def direct_models(rm_checkpoint, tiny_checkpoint):
    """The reward model and reference policy loaded with plain transformers, for expected values."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    rm = AutoModelForTokenClassification.from_pretrained(rm_checkpoint, use_safetensors=True).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, use_safetensors=True).eval()
    return rm, ref


@pytest.fixture(scope="session")
def expected(direct_models):
    """expected(rollout) -> (rm score, ref logprobs): one unpadded sequence through each model."""
    import torch

    rm, ref = direct_models

    @torch.no_grad()
    def compute(r):
        ids = torch.tensor([list(r.prompt_ids) + list(r.response_ids)])
        score = rm(input_ids=ids).logits[0, -1, 0].item()  # [1, L, 1]: the scalar at the last token
        logp = torch.log_softmax(ref(input_ids=ids).logits[0], dim=-1)  # [L, V]; row j predicts token j+1
        p = len(r.prompt_ids)
        ref_lp = [logp[p - 1 + t, tok].item() for t, tok in enumerate(r.response_ids)]
        return score, ref_lp

    return compute


@pytest.fixture(scope="session")
def close():
    """close(expected) -> a `pytest.approx` for model outputs (scores, logprobs) compared across code paths.

    The scorer pads and length-sorts micro-batches, so its float32 matmuls run in other shapes than a
    single unpadded call, and the kernels (AVX-512 or not) sum in another order on another CPU: a score
    of 23.3186 differed by 1.2e-5 between machines. Such rounding stays far below 1e-4 relative; the
    absolute floor covers values near zero, whose error comes from the same O(10) intermediates. A
    wrong position, head or weight moves a value by far more than either.
    """

    def approx(expected):
        return pytest.approx(expected, rel=1e-4, abs=1e-4)

    return approx

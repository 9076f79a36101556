"""Engines and weight snapshots shared by the generation tests (an engine start costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def base_snapshot(tiny_checkpoint):
    """The tiny checkpoint's own weights, as the learner would publish them."""
    from raylhf.contracts.snapshot import build_snapshot, named_checkpoint_tensors
    from raylhf.learners.models import load_causal_lm

    model = load_causal_lm(tiny_checkpoint, device="cpu")
    return build_snapshot(named_checkpoint_tensors(model), version=1)


@pytest.fixture(scope="session")
def other_snapshot(tiny_checkpoint):
    """Weights of a differently seeded model of the same architecture."""
    from raylhf.contracts.snapshot import build_snapshot, named_checkpoint_tensors
    from raylhf.learners.models import build_causal_lm, load_tokenizer

    model = build_causal_lm("tiny", load_tokenizer(tiny_checkpoint), max_position_embeddings=256, seed=1)
    return build_snapshot(named_checkpoint_tensors(model), version=2)


@pytest.fixture(scope="session")
def hf_model(tiny_checkpoint):
    """A transformers copy of the tiny checkpoint, the reference for logprobs and greedy outputs."""
    from raylhf.learners.models import load_causal_lm

    return load_causal_lm(tiny_checkpoint, device="cpu").eval()


@pytest.fixture(scope="session")
def vllm_engine(tiny_checkpoint):
    from raylhf.actors.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_checkpoint, kv_cache_bytes=64 * 1024 * 1024, seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_engine(tiny_checkpoint):
    from raylhf.actors.hf_engine import HFEngine

    return HFEngine(tiny_checkpoint, seed=0)

"""Shared fixtures: one local Ray per test session and a tiny HF checkpoint built on the fly."""

from __future__ import annotations

import os

import pytest

# vLLM in-process inside this process and inside Ray actors (multiprocess engine start is ~10x slower).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "list three fruits : apple banana cherry",
    "repeat the word cat two times : cat cat",
    "write red in upper case : RED",
    "count from 3 to 6 : 3 4 5 6",
    "add 2 and 5 : 7",
    "reverse : one two three -> three two one",
] * 50


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a randomly initialised `tiny` Llama + BPE tokenizer saved in HF format."""
    from raylhf.learners.models import build_causal_lm, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_ckpt")
    tokenizer = train_tokenizer(CORPUS, vocab_size=384, out_dir=out)
    model = build_causal_lm("tiny", tokenizer, max_position_embeddings=256, seed=0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by every test of the session (starting one costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    # Every test that starts Ray is slow (seconds to start, actors to spawn); `make test-fast` skips them.
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)

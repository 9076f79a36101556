"""Tiny Llama, Qwen2 and GPT-2 checkpoints through the project's vLLM engine on CPU.

Per family: the engine starts from the checkpoint, generates on chat-formatted prompts the greedy tokens
transformers generates (the project's hf engine), applies weight snapshots as the learner publishes them
(tied embeddings carried once, GPT-2's Conv1D weights in their [in, out] checkpoint layout under
`transformer.` names) and reads back exactly what it was sent. Then what only some families need: the
generation length of a 32k-context model (Qwen2) in a small KV cache, and a GPT-2 checkpoint in the old
file layout (no `transformer.` prefix, attention-mask buffers stored).

One vLLM engine per family, started once for the module's tests of that family.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from raylhf.actors.checkpoint import checkpoint_signature
from raylhf.actors.engines import create_engine
from raylhf.actors.hf_engine import HFEngine
from raylhf.actors.vllm_engine import VLLMEngine
from raylhf.configs.schema import GenerationConfig
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.snapshot import SnapshotMismatchError, build_snapshot, named_checkpoint_tensors, snapshot_tensors
from raylhf.learners.models import load_causal_lm, load_tokenizer
from tests.archs import ARCHS, GPT2_CHAT_TEMPLATE, build_tiny_checkpoint
from tests.conftest import CORPUS

pytestmark = pytest.mark.slow  # starts vLLM engines

KV_CACHE_BYTES = 64 * 1024 * 1024
GREEDY = SamplingSpec(n=1, temperature=0.0, max_new_tokens=16)
# Greedy paths of two engines (fp32, different CPU kernels, rounding ~1e-6) may part only where the top two
# logits are closer than this; the tiny models' smallest margins along their paths are ~1e-3.
TIE_MARGIN = 1e-4
TEXTS = ["add 2 and 5", "list three fruits", "repeat the word cat two times", "write red in upper case",
         "count from 3 to 6", "reverse : one two three", "the quick brown fox", "add 3 and 4"]
# EOS and end-of-turn ids (generation_config.json) each family's engine stops at: the special tokens come
# first in the vocabulary (tests/archs.py).
STOP_IDS = {"llama": (1, 4), "qwen2": (2, 0), "gpt2": (0,)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {arch: build_tiny_checkpoint(arch, tmp_path_factory.mktemp(f"tiny_{arch}"), CORPUS) for arch in ARCHS}


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def engine(arch, checkpoints):
    """The family's vLLM engine; pytest finishes one family's tests (and closes its engine) before the next."""
    e = VLLMEngine(checkpoints[arch], kv_cache_bytes=KV_CACHE_BYTES, seed=0)
    yield e
    e.close()


@pytest.fixture(scope="module")
def hf_engine(arch, checkpoints):
    return HFEngine(checkpoints[arch], seed=0)


@pytest.fixture(scope="module")
def base_snapshot(arch, checkpoints):
    """The checkpoint's own weights as the learner publishes them (transformers' names and layout)."""
    return build_snapshot(named_checkpoint_tensors(load_causal_lm(checkpoints[arch], device="cpu")), version=1)


@pytest.fixture(scope="module")
def other_snapshot(arch, checkpoints):
    """A differently seeded model of the same configuration."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoints[arch]), dtype=torch.float32)
    return build_snapshot(named_checkpoint_tensors(model), version=2)


def chat_prompts(arch: str, checkpoint) -> list[GenerationRequest]:
    """The texts as user turns under the family's chat template (GPT-2's given from outside), tokenised without
    adding special tokens: the template writes BOS itself where the family has one."""
    tokenizer = load_tokenizer(checkpoint)
    template = GPT2_CHAT_TEMPLATE if arch == "gpt2" else None  # None: the tokenizer's own
    requests = []
    for i, text in enumerate(TEXTS):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], chat_template=template,
                                                 tokenize=False, add_generation_prompt=True)
        requests.append(GenerationRequest(f"p{i}", tuple(tokenizer.encode(rendered, add_special_tokens=False))))
    return requests


def greedy(engine, requests) -> list[list[int]]:
    return [r[0].response_ids for r in engine.generate(requests, GREEDY)]


def assert_same_greedy(requests, got, expected, model) -> None:
    """Token for token, except where the paths part at a near-tie of the transformers model's top two logits."""
    identical = 0
    for req, x, y in zip(requests, got, expected):
        if x == y:
            identical += 1
            continue
        t = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        with torch.no_grad():
            logits = model(torch.tensor([list(req.prompt_ids) + x[:t]])).logits[0, -1]
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] < TIE_MARGIN, f"{req.prompt_id}: greedy paths part at {t} without a tie: {x} vs {y}"
    assert identical >= len(requests) - 1


def read_back_signature(checkpoint, tied: bool) -> list:
    """What the engine's read-back covers: every tensor of a snapshot, plus the logits matrix when tied."""
    expected = checkpoint_signature(checkpoint, "float32")
    if tied:
        embedding = next(s for s in expected if s[0].endswith(("embed_tokens.weight", "wte.weight")))
        expected.append(("lm_head.weight", embedding[1], "float32"))
    return sorted(expected)


def test_greedy_matches_transformers_from_the_checkpoint_and_after_a_snapshot(arch, engine, hf_engine, checkpoints,
                                                                               base_snapshot):
    assert engine.eos_ids == STOP_IDS[arch]  # EOS and end-of-turn, from generation_config.json
    requests = chat_prompts(arch, checkpoints[arch])
    if arch == "llama":
        assert all(r.prompt_ids[:2] == (0, 2) for r in requests)  # one BOS (the template's), then a header
    else:
        assert all(r.prompt_ids[0] not in STOP_IDS[arch] for r in requests)  # no BOS
    from_checkpoint = greedy(engine, requests)
    expected = greedy(hf_engine, requests)
    assert_same_greedy(requests, from_checkpoint, expected, hf_engine.model)
    # informative: the paths depend on the prompt and run for a while before any stop token
    assert len({tuple(x) for x in from_checkpoint}) >= 4 and sum(len(x) >= 8 for x in from_checkpoint) >= 4

    engine.load_weights(dataclasses.replace(base_snapshot, version=7))
    synced = engine.generate(requests, GREEDY)
    assert {r[0].policy_version for r in synced} == {7}
    assert [r[0].response_ids for r in synced] == from_checkpoint  # the same weights, the same kernels
    assert_same_greedy(requests, [r[0].response_ids for r in synced], expected, hf_engine.model)


def test_snapshot_reaches_every_engine_tensor(arch, engine, hf_engine, checkpoints, base_snapshot, other_snapshot):
    tied = arch != "llama"
    read_back = engine.read_back()  # HF names and layout: GPT-2's Conv1D weights [in, out] as in the checkpoint
    assert sorted((n, tuple(t.shape), "float32") for n, t in read_back.items()) == read_back_signature(
        checkpoints[arch], tied)
    requests = chat_prompts(arch, checkpoints[arch])
    before = greedy(engine, requests)
    try:
        engine.load_weights(other_snapshot)
        engine_weights = engine.read_back()
        for name, tensor in snapshot_tensors(other_snapshot):
            assert torch.equal(engine_weights[name], tensor), name
        if tied:  # logits come from the new embedding, not a stale copy of the old one
            embedding = "model.embed_tokens.weight" if arch == "qwen2" else "transformer.wte.weight"
            assert torch.equal(engine_weights["lm_head.weight"], engine_weights[embedding])
        changed = greedy(engine, requests)
        assert sum(a != b for a, b in zip(before, changed)) >= len(requests) - 1
        hf_engine.load_weights(other_snapshot)
        assert_same_greedy(requests, changed, greedy(hf_engine, requests), hf_engine.model)
    finally:
        engine.load_weights(base_snapshot)
        hf_engine.load_weights(base_snapshot)
    assert all(torch.equal(engine.read_back()[n], t) for n, t in snapshot_tensors(base_snapshot))
    assert greedy(engine, requests) == before


def test_snapshot_in_another_layout_is_refused(arch, engine, base_snapshot):
    """What an engine expects is the transformers model's state dict: for a tied family the embedding once,
    for Llama its own lm_head, for GPT-2 the Conv1D weights [in, out] (vLLM's own layout is [out, in])."""
    tensors = dict(snapshot_tensors(base_snapshot))
    if arch == "llama":
        bad, needle = {n: t for n, t in tensors.items() if n != "lm_head.weight"}, "missing lm_head.weight"
    elif arch == "qwen2":
        bad = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"]})
        needle = "unexpected lm_head.weight"
    else:
        name = "transformer.h.0.attn.c_attn.weight"
        bad, needle = dict(tensors, **{name: tensors[name].t()}), f"{name}: shape [384, 128], expected [128, 384]"
    sums = engine.checksums()
    with pytest.raises(SnapshotMismatchError, match=needle.replace("[", r"\[")):
        engine.load_weights(build_snapshot(bad.items(), version=99))
    assert engine.checksums() == sums and engine.version != 99


def test_long_context_model_starts_in_a_small_kv_cache(checkpoints):
    """Qwen2's 32k positions need 32 MB of KV cache for one full-length sequence here. In 8 MB vLLM refuses to
    start when told the full length; unset, `generation.max_model_len` caps it at what fits; set, it is the
    limit itself, and longer requests fail alone."""
    path = checkpoints["qwen2"]
    assert AutoConfig.from_pretrained(path).max_position_embeddings == 32768
    fitted = create_engine(GenerationConfig(kv_cache_bytes=8 * 1024 * 1024), path)
    try:
        assert 4096 < fitted.context_len < 32768
    finally:
        fitted.close()
    capped = create_engine(GenerationConfig(kv_cache_bytes=8 * 1024 * 1024, max_model_len=1024), path)
    try:
        assert capped.context_len == 1024
        ok = GenerationRequest("ok", (5,) * 1000)
        results = capped.generate([ok, GenerationRequest("long", (5,) * 1020)], GREEDY)
        assert isinstance(results[0], list) and isinstance(results[1], RequestError)
        assert "context of 1024" in results[1].reason
    finally:
        capped.close()
    hf = create_engine(GenerationConfig(engine="hf", max_model_len=1024), path)
    assert hf.context_len == 1024
    with pytest.raises(ValueError, match="exceeds the 32768 positions"):
        create_engine(GenerationConfig(engine="hf", max_model_len=40000), path)


def test_gpt2_checkpoint_in_the_old_layout(checkpoints, tmp_path):
    """GPT-2 checkpoints written before transformers prefixed its names store `h.0.attn.c_attn.weight` and the
    attention-mask buffers; transformers and vLLM both load them, and the engine expects snapshots under the
    names the learner's transformers model publishes."""
    path = tmp_path / "gpt2_old"
    shutil.copytree(checkpoints["gpt2"], path)
    tensors = {n.removeprefix("transformer."): t for n, t in load_file(path / "model.safetensors").items()}
    mask = torch.tril(torch.ones(256, 256, dtype=torch.bool)).view(1, 1, 256, 256)
    tensors.update({f"h.{i}.attn.bias": mask.clone() for i in range(2)})
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert checkpoint_signature(path, "float32") == checkpoint_signature(checkpoints["gpt2"], "float32")

    model = load_causal_lm(path, device="cpu").eval()
    engine = VLLMEngine(path, kv_cache_bytes=KV_CACHE_BYTES, seed=0)
    try:
        requests = chat_prompts("gpt2", path)
        from_checkpoint = greedy(engine, requests)
        engine.load_weights(build_snapshot(named_checkpoint_tensors(model), version=3))
        assert greedy(engine, requests) == from_checkpoint
        assert_same_greedy(requests, from_checkpoint, greedy(HFEngine(path), requests), model)
    finally:
        engine.close()

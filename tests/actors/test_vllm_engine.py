"""The vLLM engine in-process on CPU with the tiny model: weight sync read back from the engine,
versions, greedy agreement with the hf engine, behaviour logprobs against a transformers forward.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raylhf.actors.checkpoint import checkpoint_signature
from raylhf.contracts.protocols import GenerationEngine, GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.snapshot import SnapshotMismatchError, build_snapshot, snapshot_checksums, snapshot_tensors

pytestmark = pytest.mark.slow  # starts vLLM engines

GREEDY = SamplingSpec(n=1, temperature=0.0, max_new_tokens=16)
# Behaviour logprobs vs a transformers forward pass: both fp32 on CPU with different kernels.
# Observed differences are ~1e-6; the temperature / top-p effects tested against are > 1e-2.
LOGPROB_ATOL = 1e-4
# Greedy paths may part where the top two logits are closer than kernel rounding.
TIE_MARGIN = 1e-4


def prompts(n: int = 8) -> list[GenerationRequest]:
    return [GenerationRequest(f"p{i}", tuple([1] + [(7 * i + 3 * j) % 360 + 3 for j in range(2 + i)])) for i in range(n)]


def greedy_ids(engine, requests=None) -> list[list[int]]:
    return [r[0].response_ids for r in engine.generate(requests or prompts(), GREEDY)]


def expected_checksums(snapshot):
    """The snapshot's checksums plus the logits matrix, which the tiny model ties to the embedding."""
    sums = snapshot_checksums(snapshot)
    sums.setdefault("lm_head.weight", sums["model.embed_tokens.weight"])
    return sums


@pytest.fixture
def restore(vllm_engine, base_snapshot):
    """Tests that sync other weights leave the shared engine with the checkpoint's weights."""
    yield
    vllm_engine.load_weights(base_snapshot)


def test_engines_implement_the_protocol(vllm_engine, hf_engine):
    assert isinstance(vllm_engine, GenerationEngine) and isinstance(hf_engine, GenerationEngine)


def test_read_back_covers_every_checkpoint_tensor(vllm_engine, tiny_checkpoint):
    """The read-back maps the engine's fused, repacked layers onto exactly the checkpoint's tensors."""
    read_back = vllm_engine._llm.collective_rpc("weight_signature")[0]
    expected = checkpoint_signature(tiny_checkpoint, "float32") + [("lm_head.weight", (372, 128), "float32")]
    assert sorted(read_back) == sorted(expected)


def test_sync_sets_every_engine_tensor_to_the_snapshot(vllm_engine, base_snapshot, other_snapshot, restore):
    assert vllm_engine.checksums() == expected_checksums(base_snapshot)  # started from the checkpoint
    vllm_engine.load_weights(other_snapshot)
    after = vllm_engine.checksums()
    assert after == expected_checksums(other_snapshot)
    # the comparison can fail: every tensor but the norms (initialised to ones) differs between the models
    differ = [n for n, s in expected_checksums(base_snapshot).items() if after[n] != s]
    assert len(differ) == len(after) - 9 and not any("norm" in n for n in differ)
    vllm_engine.load_weights(base_snapshot)
    assert vllm_engine.checksums() == expected_checksums(base_snapshot)


def test_read_back_values_equal_snapshot(vllm_engine, other_snapshot, restore):
    """The same statement as the checksums, on the values (guards the checksum itself)."""
    vllm_engine.load_weights(other_snapshot)
    engine = vllm_engine.read_back()
    for name, tensor in snapshot_tensors(other_snapshot):
        assert torch.equal(engine[name], tensor), name
    assert torch.equal(engine["lm_head.weight"], engine["model.embed_tokens.weight"])


def test_greedy_output_follows_the_weights_and_versions(vllm_engine, base_snapshot, other_snapshot, restore):
    vllm_engine.load_weights(dataclasses.replace(base_snapshot, version=10))
    before = vllm_engine.generate(prompts(), GREEDY)
    assert {r[0].policy_version for r in before} == {10} and vllm_engine.version == 10

    vllm_engine.load_weights(dataclasses.replace(other_snapshot, version=11))
    changed = vllm_engine.generate(prompts(), GREEDY)
    assert {r[0].policy_version for r in changed} == {11}
    assert sum(a[0].response_ids != b[0].response_ids for a, b in zip(before, changed)) >= 6

    vllm_engine.load_weights(dataclasses.replace(base_snapshot, version=12))
    back = vllm_engine.generate(prompts(), GREEDY)
    assert {r[0].policy_version for r in back} == {12}
    assert [r[0].response_ids for r in back] == [r[0].response_ids for r in before]


@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_engine"])
def test_mismatched_snapshot_is_refused_and_weights_kept(engine_name, request, base_snapshot, other_snapshot):
    engine = request.getfixturevalue(engine_name)
    engine.load_weights(base_snapshot)
    version, sums, outputs = engine.version, engine.checksums(), greedy_ids(engine)
    tensors = dict(snapshot_tensors(other_snapshot))
    missing = {n: t for n, t in tensors.items() if n != "model.norm.weight"}
    reshaped = dict(tensors, **{"model.layers.1.mlp.up_proj.weight": tensors["model.layers.1.mlp.up_proj.weight"][:-1]})
    bf16 = {n: t.to(torch.bfloat16) for n, t in tensors.items()}
    extra = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"]})  # tied: loaded once
    cases = [
        (missing, "missing model.norm.weight"),
        (reshaped, "model.layers.1.mlp.up_proj.weight: shape [383, 128], expected [384, 128]"),
        (bf16, "dtype bfloat16, expected float32"),
        (extra, "unexpected lm_head.weight"),
    ]
    for bad, needle in cases:
        with pytest.raises(SnapshotMismatchError) as err:
            engine.load_weights(build_snapshot(bad.items(), version=99))
        assert needle in str(err.value)
        assert engine.version == version and engine.checksums() == sums
    assert greedy_ids(engine) == outputs


def test_greedy_agrees_with_hf_engine(vllm_engine, hf_engine, hf_model, base_snapshot):
    vllm_engine.load_weights(base_snapshot)
    hf_engine.load_weights(base_snapshot)
    requests = prompts(12)
    a, b = greedy_ids(vllm_engine, requests), greedy_ids(hf_engine, requests)
    identical = 0
    for req, x, y in zip(requests, a, b):
        if x == y:
            identical += 1
            continue
        t = next(i for i, (u, v) in enumerate(zip(x, y)) if u != v)
        with torch.no_grad():
            logits = hf_model(torch.tensor([list(req.prompt_ids) + x[:t]])).logits[0, -1]
        top2 = logits.topk(2).values
        assert top2[0] - top2[1] < TIE_MARGIN, f"{req.prompt_id}: greedy paths part at {t} without a tie"
    assert identical >= len(requests) - 1


def reference_logprobs(model, prompt_ids, response_ids, temperature: float, top_p: float) -> torch.Tensor:
    """log π(token) under softmax(top_p_filter(logits / T)): the distribution sampled from."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt_ids) + list(response_ids)])).logits[0]
    logits = logits[len(prompt_ids) - 1 : -1].double()  # [T, V], row t predicts response token t
    if temperature > 0:
        logits = logits / temperature
    if top_p < 1:
        # keep the smallest set of most likely tokens whose mass reaches top_p (vLLM's and HF's rule)
        sorted_logits, order = logits.sort(-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[:, -1] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.log_softmax(-1).gather(-1, torch.tensor(response_ids)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (1.5, 1.0), (0.0, 1.0)])
@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_engine"])
def test_behaviour_logprobs_match_transformers_forward(engine_name, temperature, top_p, request, hf_model, base_snapshot):
    engine = request.getfixturevalue(engine_name)
    engine.load_weights(base_snapshot)
    spec = SamplingSpec(n=2 if temperature > 0 else 1, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3)
    results = engine.generate(prompts(6), spec)
    worst = 0.0
    raw_gap = 0.0
    for req, rollouts in zip(prompts(6), results):
        for r in rollouts:
            ref = reference_logprobs(hf_model, req.prompt_ids, r.response_ids, temperature, top_p)
            assert torch.isfinite(ref).all(), "a sampled token lies outside the top-p set"
            got = torch.tensor(r.logprobs, dtype=torch.float64)
            worst = max(worst, (got - ref).abs().max().item())
            raw = reference_logprobs(hf_model, req.prompt_ids, r.response_ids, 1.0, 1.0)
            raw_gap = max(raw_gap, (got - raw).abs().max().item())
    assert worst < LOGPROB_ATOL
    if (temperature, top_p) != (1.0, 1.0) and temperature > 0:
        assert raw_gap > 100 * LOGPROB_ATOL  # the tolerance tells the sampled distribution from the raw one


@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_engine"])
def test_bad_requests_fail_alone(engine_name, request, base_snapshot):
    engine = request.getfixturevalue(engine_name)
    engine.load_weights(base_snapshot)
    good = prompts(2)
    batch = [
        good[0],
        GenerationRequest("empty", ()),
        GenerationRequest("too-long", (1,) * 250),  # + 16 new tokens > 256
        GenerationRequest("bad-token", (1, 10_000)),
        GenerationRequest("cold", (1, 5), SamplingSpec(temperature=-1.0)),
        GenerationRequest("no-samples", (1, 5), SamplingSpec(n=0)),
        good[1],
    ]
    results = engine.generate(batch, GREEDY)
    assert [type(r) for r in results] == [list] + [RequestError] * 5 + [list]
    reasons = {r.prompt_id: r.reason for r in results if isinstance(r, RequestError)}
    assert "empty prompt" in reasons["empty"]
    assert "context of 256" in reasons["too-long"]
    assert "vocabulary" in reasons["bad-token"]
    assert "temperature" in reasons["cold"] and "n must be" in reasons["no-samples"]
    assert [r[0].response_ids for r in (results[0], results[-1])] == greedy_ids(engine, good)


def test_samples_seeds_and_stop_tokens(vllm_engine, base_snapshot):
    vllm_engine.load_weights(base_snapshot)
    spec = SamplingSpec(n=3, temperature=1.0, max_new_tokens=10, seed=7)
    first = vllm_engine.generate(prompts(4), spec)
    assert all(len(r) == 3 for r in first)
    assert all(len(x.response_ids) == len(x.logprobs) == 10 and x.finish_reason == "length" for r in first for x in r)
    assert len({x.sample_id for r in first for x in r}) == 12
    assert len({tuple(x.response_ids) for x in first[0]}) == 3  # n samples differ
    # a request's samples depend on (seed, prompt_id), not on what else is in the batch
    alone = vllm_engine.generate(prompts(4)[2:3], spec)
    assert [x.response_ids for x in alone[0]] == [x.response_ids for x in first[2]]
    other_seed = vllm_engine.generate(prompts(4), dataclasses.replace(spec, seed=8))
    assert [x.response_ids for x in other_seed[0]] != [x.response_ids for x in first[0]]

    stop = first[0][0].response_ids[3]  # a token this request samples again under the same seed
    stopped = vllm_engine.generate(prompts(1), dataclasses.replace(spec, stop_token_ids=(stop,)))[0][0]
    assert stopped.finish_reason == "stop" and stopped.response_ids[-1] == stop
    assert stopped.response_ids == first[0][0].response_ids[: first[0][0].response_ids.index(stop) + 1]


@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_engine"])
def test_eos_ends_a_response(engine_name, request, base_snapshot):
    """Weights under which EOS is every prompt's most likely next token: responses are [EOS], "eos"."""
    engine = request.getfixturevalue(engine_name)
    tensors = {n: t.clone() for n, t in snapshot_tensors(base_snapshot)}
    for name, t in tensors.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            t.zero_()  # the residual stream stays the input embedding
    tensors["model.norm.weight"].zero_()[0] = 1.0  # the final hidden state is its dimension 0 only, > 0
    emb = tensors["model.embed_tokens.weight"]
    emb[:, 0] = 1.0
    emb[2, 0] = 5.0  # tied logits: EOS (id 2) scores 5x any other token
    engine.load_weights(build_snapshot(tensors.items(), version=5))
    try:
        results = engine.generate(prompts(3), GREEDY)
        assert all(r[0].response_ids == [2] and r[0].finish_reason == "eos" for r in results)
        assert all(len(r[0].logprobs) == 1 and r[0].logprobs[0] > -1.0 for r in results)
    finally:
        engine.load_weights(base_snapshot)

"""Request validation, seeds, finish reasons and the snapshot helpers the engines rely on (no engine)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from raylhf.actors.sampling import finish_reason, request_problem, request_seed, sampling_spec
from raylhf.configs.schema import GenerationConfig
from raylhf.contracts.protocols import GenerationRequest, SamplingSpec
from raylhf.contracts.snapshot import (
    SnapshotMismatchError,
    build_snapshot,
    check_signature,
    named_checkpoint_tensors,
    signature_mismatches,
    snapshot_checksums,
    snapshot_tensors,
    tensor_checksum,
)

CTX, VOCAB = 64, 100


def problem(prompt_ids, **sampling):
    return request_problem(GenerationRequest("p", tuple(prompt_ids)), SamplingSpec(**sampling), CTX, VOCAB)


def test_valid_request_has_no_problem():
    assert problem([1, 2, 3], max_new_tokens=61) is None  # 3 + 61 == context


@pytest.mark.parametrize(
    "prompt_ids, sampling, needle",
    [
        ([], {}, "empty prompt"),
        ([1, 2, 3], {"max_new_tokens": 62}, "exceeds the model's context of 64"),
        ([1] * 65, {"max_new_tokens": 1}, "exceeds"),
        ([1, 100], {}, "outside the vocabulary"),
        ([1, -1], {}, "outside the vocabulary"),
        ([1], {"temperature": -0.1}, "temperature"),
        ([1], {"temperature": float("nan")}, "temperature"),
        ([1], {"n": 0}, "n must be"),
        ([1], {"top_p": 0.0}, "top_p"),
        ([1], {"top_p": 1.5}, "top_p"),
        ([1], {"max_new_tokens": 0}, "max_new_tokens"),
        ([1], {"stop_token_ids": (5, 100)}, "stop_token_ids [100]"),
        ([1], {"seed": 1.5}, "seed"),
    ],
)
def test_bad_request_is_named(prompt_ids, sampling, needle):
    reason = problem(prompt_ids, **sampling)
    assert reason is not None and needle in reason


def test_sampling_spec_from_config():
    cfg = GenerationConfig(n=4, temperature=0.7, top_p=0.9, max_new_tokens=12, stop_token_ids=[5])
    assert sampling_spec(cfg, seed=3) == SamplingSpec(4, 0.7, 0.9, 12, (5,), 3)


def test_request_seed_is_stable_and_distinct():
    assert request_seed(0, "a") == request_seed(0, "a")  # no per-process hash randomisation
    assert len({request_seed(s, p) for s in range(3) for p in "abc"}) == 9
    assert all(0 <= request_seed(s, "x") < 2**31 for s in range(100))


def test_finish_reason():
    assert finish_reason([5, 2], eos_ids=(2,), stop_ids=(7,)) == "eos"
    assert finish_reason([5, 7], eos_ids=(2,), stop_ids=(7,)) == "stop"
    assert finish_reason([5, 6], eos_ids=(2,), stop_ids=(7,)) == "length"
    assert finish_reason([], eos_ids=(2,), stop_ids=()) == "length"


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(3, 4, generator=g)),
        ("b.weight", torch.randn(5, generator=g).to(torch.bfloat16)),
        ("c.weight", torch.randn(2, 2, generator=g)),
    ]


def test_snapshot_round_trip_and_checksums():
    tensors = _tensors()
    snap = build_snapshot(tensors, version=7)
    assert set(snap.buffers) == {"float32", "bfloat16"} and snap.buffers["bfloat16"].dtype == np.uint16
    for (name, t), (name2, v) in zip(tensors, snapshot_tensors(snap)):
        assert name == name2 and v.dtype == t.dtype and torch.equal(v, t)
    assert snapshot_checksums(snap) == {n: tensor_checksum(t) for n, t in tensors}


def test_checksum_is_exact():
    t = torch.randn(4, 4)
    assert tensor_checksum(t) == tensor_checksum(t.clone())
    bumped = t.clone()
    bumped[1, 2] = torch.nextafter(bumped[1, 2], torch.tensor(1e9))  # one ulp
    assert tensor_checksum(bumped) != tensor_checksum(t)
    assert tensor_checksum(t.reshape(2, 8)) != tensor_checksum(t)  # shape counts
    assert tensor_checksum(t.double()) != tensor_checksum(t)  # dtype counts
    assert tensor_checksum(torch.tensor([-0.0])) == tensor_checksum(torch.tensor([0.0]))


def test_signature_mismatches_name_each_problem():
    snap = build_snapshot(_tensors(), version=1)
    expected = [("a.weight", (3, 4), "float32"), ("b.weight", (5,), "float32"), ("d.weight", (1,), "float32")]
    problems = signature_mismatches(snap, expected)
    assert problems == ["missing d.weight", "unexpected c.weight", "b.weight: dtype bfloat16, expected float32"]
    with pytest.raises(SnapshotMismatchError, match="missing d.weight.*previous weights are kept"):
        check_signature(snap, expected, "the test model")
    check_signature(snap, snap.signature(), "itself")


def test_named_checkpoint_tensors_lists_tied_weights_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"embed": emb, "head": head})
    assert [n for n, _ in named_checkpoint_tensors(model)] == ["embed.weight"]
    assert len(model.state_dict()) == 2


@pytest.mark.slow
def test_engine_modules_import_without_ray_or_vllm():
    """The hf engine must run where vLLM is missing; no engine needs Ray."""
    code = (
        "import sys, raylhf.actors.hf_engine, raylhf.actors.engines, raylhf.actors.sampling, raylhf.actors.checkpoint;"
        "assert 'vllm' not in sys.modules and 'ray' not in sys.modules, 'hf';"
        "import raylhf.actors.vllm_engine, raylhf.actors.worker_extension;"
        "assert 'ray' not in sys.modules, 'vllm'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

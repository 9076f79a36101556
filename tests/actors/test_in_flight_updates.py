"""In-flight weight updates (`generation.weight_updates: in_flight`) on a real vLLM generator actor: a snapshot
sent while a long generate call runs is applied inside it, between two decoding steps.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from raylhf.actors.generator import WEIGHTS_GROUP, broadcast_weights, load_weights_call, start_generators
from raylhf.configs.schema import GenerationConfig
from raylhf.contracts.protocols import GenerationRequest, SamplingSpec
from raylhf.contracts.remote import NamedActor
from raylhf.contracts.snapshot import SnapshotMismatchError, build_snapshot, snapshot_checksums, snapshot_tensors

pytestmark = pytest.mark.slow  # a Ray actor hosting a vLLM engine

CFG = GenerationConfig(engine="vllm", num_generators=1, num_cpus=1.0, kv_cache_bytes=64 * 1024 * 1024,
                       weight_updates="in_flight")
# Long enough (64 x 160 tokens, about 2-4 s on one core) that a load sent a moment after the call lands in it;
# the random tiny model rarely samples EOS, so most responses run to the limit.
LONG = SamplingSpec(n=1, temperature=1.0, max_new_tokens=160, seed=0)
PROMPTS = [GenerationRequest(f"p{i}", (1, 10 + i, 20 + 2 * i, 30)) for i in range(64)]


@pytest.fixture(scope="module")
def generator(ray_session, tiny_checkpoint):
    [actor] = start_generators(CFG, tiny_checkpoint, seed=0, name_prefix="test-in-flight")
    yield actor.handle
    ray_session.kill(actor.handle)


def _let_it_start(ray, call):
    """Give `call` time to start decoding (the actor is idle and warm, so it is dispatched at once); any other
    default-group call would queue behind it, so there is nothing to poll."""
    time.sleep(0.5)
    assert not ray.wait([call], timeout=0)[0], "the generate call ended before the snapshot was sent"


def test_snapshot_sent_mid_call_is_applied_inside_it(ray_session, generator, base_snapshot, other_snapshot):
    ray = ray_session
    assert ray.get(load_weights_call(generator, dataclasses.replace(base_snapshot, version=1), True), timeout=60) == 1
    call = generator.generate.remote(PROMPTS, LONG)
    _let_it_start(ray, call)
    t0 = time.perf_counter()
    [load] = broadcast_weights([NamedActor("test-in-flight", generator)], dataclasses.replace(other_snapshot, version=2),
                               in_flight=True)
    assert ray.get(load, timeout=60) == 2
    load_s = time.perf_counter() - t0
    # The load returned while the call was still running: it was not queued behind it.
    assert not ray.wait([call], timeout=0)[0], "the load waited for the generate call to end"
    results = ray.get(call, timeout=120)
    rollouts = [r for result in results for r in result]
    assert len(rollouts) == len(PROMPTS)
    assert {r.policy_version for r in rollouts} == {1}  # the version the call began with: staleness never understated
    spanned = [r for r in rollouts if r.spans_versions()]
    assert spanned and all(r.last_version == 2 for r in spanned)
    assert all(r.last_version in (1, 2) for r in rollouts)
    assert all(len(r.logprobs) == len(r.response_ids) for r in rollouts)
    # the engine computes with exactly the new weights afterwards
    sums = ray.get(generator.checksums.remote(), timeout=60)
    expected = snapshot_checksums(other_snapshot)
    assert {n: sums[n] for n in expected} == expected
    stats = ray.get(generator.stats.remote(), timeout=60)
    assert stats["in_flight_syncs"] >= 1 and stats["version"] == 2
    # a call that starts under version 2 is not marked as spanning
    after = ray.get(generator.generate.remote(PROMPTS[:4], dataclasses.replace(LONG, max_new_tokens=8)), timeout=60)
    assert {(r[0].policy_version, r[0].last_version) for r in after} == {(2, 2)}
    print(f"load applied mid-call in {load_s:.3f} s; {len(spanned)}/{len(rollouts)} rollouts span versions 1->2")


def test_mismatched_snapshot_mid_call_fails_the_load_not_the_call(ray_session, generator, base_snapshot):
    ray = ray_session
    assert ray.get(load_weights_call(generator, dataclasses.replace(base_snapshot, version=3), True), timeout=60) == 3
    before = ray.get(generator.checksums.remote(), timeout=60)
    call = generator.generate.remote(PROMPTS, LONG)
    _let_it_start(ray, call)
    tensors = {n: t for n, t in snapshot_tensors(base_snapshot) if "layers.3" not in n}
    bad = generator.load_weights.options(concurrency_group=WEIGHTS_GROUP).remote(build_snapshot(tensors.items(), version=4))
    with pytest.raises(SnapshotMismatchError, match="missing model.layers.3"):
        ray.get(bad, timeout=60)
    results = ray.get(call, timeout=120)
    assert all(len(r) == 1 and r[0].policy_version == r[0].last_version == 3 for r in results)
    assert ray.get(generator.version.remote(), timeout=60) == 3
    assert ray.get(generator.checksums.remote(), timeout=60) == before

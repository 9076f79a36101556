"""The Ray scorer pool: real actors, tiny models. One pool is shared by the module (actors take seconds
to start); the fault tests leave it healthy, which is what they check."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from raylhf.reward_service.errors import PoolFullError, ScorerStartupError, ScoringError

TIMEOUT_S = 4.0
SHIFT, SCALE = 0.5, 2.0
PENALTY_WEIGHT, TARGET, COEF = 0.5, 10, 0.1


@pytest.fixture(scope="module")
def pool(ray_session, rm_checkpoint, tiny_checkpoint):
    from raylhf.configs.loader import load_config
    from raylhf.reward_service.pool import RewardPool

    cfg = load_config(
        "tiny",
        [
            "reward.num_actors=2",
            "reward.num_cpus=0.5",
            "reward.request_size=8",
            "reward.max_in_flight=2",
            f"reward.request_timeout_s={TIMEOUT_S}",
            "reward.startup_timeout_s=120.0",
            "reward.normalize=fixed",
            f"reward.shift={SHIFT}",
            f"reward.scale={SCALE}",
            "reward.sources=[{kind: rm, weight: 1.0}, {kind: token_function, weight: %s, "
            'path: "raylhf.reward_service.rewards:length_penalty", kwargs: {target_tokens: %d, coef: %s}}]'
            % (PENALTY_WEIGHT, TARGET, COEF),
        ],
    )
    p = RewardPool(cfg.reward, rm_path=str(rm_checkpoint), ref_path=str(tiny_checkpoint))
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def want(expected):
    """Expected (score, ref_logprobs) of a rollout under the pool's sources and fixed normalisation."""

    def compute(r):
        rm_score, ref_lp = expected(r)
        raw = rm_score + PENALTY_WEIGHT * (-COEF * max(0, len(r.response_ids) - TARGET))
        return (raw - SHIFT) * SCALE, ref_lp

    return compute


@pytest.fixture(scope="module")
def check(want, close):
    """check(results, rollouts): the same rollouts, in order, each scored as a direct model call scores it."""

    def compare(results, rollouts):
        assert [r.sample_id for r in results] == [r.sample_id for r in rollouts]
        for r, s in zip(rollouts, results):
            score, ref_lp = want(r)
            assert s.score == close(score)
            assert s.ref_logprobs == close(ref_lp)
            assert s.t_scored >= s.t_generated

    return compare


def collect(pool, request_ids, deadline_s=60.0):
    got: dict[int, list] = {}
    end = time.monotonic() + deadline_s
    while set(got) != set(request_ids):
        assert time.monotonic() < end, f"requests {set(request_ids) - set(got)} never completed"
        for rid, results in pool.ready(timeout=1.0):
            assert rid not in got, f"request {rid} delivered twice"
            got[rid] = results
    return got


def test_scores_equal_a_direct_model_call_in_order_across_actors(pool, make_rollouts, check):
    from raylhf.contracts.protocols import Scorer, ScoringPool

    assert isinstance(pool, Scorer) and isinstance(pool, ScoringPool)
    before = {name: a["completed"] for name, a in pool.stats()["actors"].items()}
    rollouts = make_rollouts(40, seed=10)
    check(pool.score(rollouts), rollouts)  # 5 requests of 8 over 2 actors
    after = pool.stats()["actors"]
    assert all(after[name]["completed"] > before[name] for name in before), "both actors took part"
    assert pool.actor_info[0]["threads"] == 1 and pool.actor_info[0]["ref"] == "LlamaForCausalLM"


def test_submit_ready_matches_results_to_requests_and_applies_backpressure(pool, make_rollouts, check):
    batches = [make_rollouts(3, seed=20 + i, prefix=f"b{i}-") for i in range(pool.capacity)]
    ids = [pool.submit(b, block=False) for b in batches]
    with pytest.raises(PoolFullError):
        pool.submit(make_rollouts(1, seed=30), block=False)
    got = collect(pool, ids)
    for rid, batch in zip(ids, batches):
        check(got[rid], batch)
    assert pool.ready(timeout=0.0) == [] and pool.num_in_flight == 0


def test_killed_actor_loses_and_duplicates_nothing(ray_session, pool, make_rollouts, check):
    stats0 = pool.stats()
    victim = pool.actors["scorer-0"]
    victim.debug_sleep.remote(2.0)  # keeps its queue in flight until the kill
    batches = [make_rollouts(8, seed=40 + i, prefix=f"k{i}-") for i in range(8)]
    ids = [pool.submit(b) for b in batches[:4]]
    assert pool.stats()["actors"]["scorer-0"]["in_flight"] == 2
    ray_session.kill(victim)
    ids += [pool.submit(b) for b in batches[4:]]  # blocks on a full pool while the lost work moves
    got = collect(pool, ids)
    seen = [r.sample_id for rid in ids for r in got[rid]]
    assert sorted(seen) == sorted(r.sample_id for b in batches for r in b)  # all there, none twice
    for rid, batch in zip(ids, batches):
        check(got[rid], batch)
    stats = pool.stats()
    assert stats["deaths"] == stats0["deaths"] + 1
    assert stats["actors"]["scorer-0"]["restarts"] == stats0["actors"]["scorer-0"]["restarts"] + 1
    assert stats["resubmitted"] >= stats0["resubmitted"] + 2
    assert pool.actors["scorer-0"] != victim


def test_request_lost_more_than_max_attempts_is_an_error_not_dropped(ray_session, pool, make_rollouts, check):
    victim = pool.actors["scorer-0"]
    victim.debug_sleep.remote(2.0)
    batches = {}
    cfg = pool.cfg
    pool.cfg = cfg.model_copy(update={"max_attempts": 1})
    try:
        for seed in (45, 46):  # one request per actor
            rollouts = make_rollouts(4, seed=seed, prefix=f"m{seed}-")
            batches[pool.submit(rollouts)] = rollouts
        ray_session.kill(victim)
        got, errors = {}, []
        end = time.monotonic() + 60
        while len(got) + len(errors) < 2:
            assert time.monotonic() < end
            try:
                got.update(pool.ready(timeout=1.0))
            except ScoringError as e:
                errors.append(e)
    finally:
        pool.cfg = cfg
    assert len(errors) == 1 and len(got) == 1
    assert errors[0].request_id in batches and errors[0].request_id not in got
    assert re.search(r"lost 1 times \(max_attempts\): scorer actor scorer-0 .*died: ActorDiedError", str(errors[0]))
    (rid, results), = got.items()
    check(results, batches[rid])


def test_hung_actor_hits_the_timeout_and_is_replaced(pool, make_rollouts, check):
    stats0 = pool.stats()
    pool.actors["scorer-1"].debug_sleep.remote(600.0)
    rollouts = make_rollouts(16, seed=50)
    t0 = time.monotonic()
    check(pool.score(rollouts), rollouts)  # one request per actor; scorer-1's is resubmitted
    elapsed = time.monotonic() - t0
    stats = pool.stats()
    assert stats["timeouts"] == stats0["timeouts"] + 1
    assert stats["actors"]["scorer-1"]["restarts"] == stats0["actors"]["scorer-1"]["restarts"] + 1
    assert TIMEOUT_S <= elapsed < 60.0


def test_scoring_failure_is_an_error_naming_actor_and_cause(pool, make_rollouts, check):
    good = make_rollouts(3, seed=60)
    bad = dataclasses.replace(good[0], sample_id="bad", response_ids=[10**6, 2], logprobs=[0.0, 0.0])
    with pytest.raises(ScoringError) as err:
        pool.score([bad])
    assert err.value.actor is not None and err.value.actor.startswith("scorer-")
    assert err.value.actor in str(err.value) and "token id 1000000 out of range" in str(err.value)
    check(pool.score(good), good)  # the pool keeps working; nothing was scored as 0


def test_actor_that_cannot_load_its_model_is_a_startup_error(ray_session, tmp_path):
    from raylhf.configs.schema import RewardConfig
    from raylhf.reward_service.pool import RewardPool

    with pytest.raises(ScorerStartupError) as err:
        RewardPool(RewardConfig(startup_timeout_s=120.0), rm_path=str(tmp_path / "missing_rm"), ref_path=None)
    assert err.value.actor == "scorer-0"
    assert "scorer-0" in str(err.value) and "reward.rm_path: checkpoint not found" in str(err.value)


def test_pool_methods_match_the_scoring_pool_protocol():
    import inspect

    from raylhf.contracts.protocols import ScoringPool
    from raylhf.reward_service.pool import RewardPool

    methods = [m for m in vars(ScoringPool) if not m.startswith("_") and callable(getattr(ScoringPool, m))]
    assert {"submit", "ready", "score", "has_capacity", "stats", "shutdown"} <= set(methods)
    for m in methods:
        assert inspect.signature(getattr(RewardPool, m)) == inspect.signature(getattr(ScoringPool, m)), m

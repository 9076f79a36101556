"""The Ray scorer pool: real actors, tiny models. One pool is shared by the module (actors take seconds
to start); the fault tests leave it healthy, which is what they check. Tests that leave a pool stopped
(reject rate past its limit, a replacement that never starts) build a small one of their own."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from raylhf.reward_service.errors import PoolFullError, ScorerStartupError, ScoringError
from raylhf.reward_service.rejects import NONFINITE_FUNCTION_REWARD, TOKEN_OUT_OF_VOCAB
from tests.reward_service.faulty_rewards import NAN_MARKER, RAISE_MARKER, SOURCE

TIMEOUT_S = 4.0
SHIFT, SCALE = 0.5, 2.0
PENALTY_WEIGHT, TARGET, COEF = 0.5, 10, 0.1


@pytest.fixture(scope="module")
def pool(ray_session, rm_checkpoint, tiny_checkpoint, tmp_path_factory):
    from raylhf.configs.loader import load_config
    from raylhf.reward_service.pool import RewardPool

    cfg = load_config(
        "tiny",
        [
            "reward.num_actors=2",
            "reward.num_cpus=0.5",
            "ppo.num_cpus=0.5",  # the PPO actors of this config must fit 2 cores
            "reward.request_size=8",
            "reward.max_in_flight=2",
            f"supervision.scorer.call_timeout_s={TIMEOUT_S}",
            "supervision.scorer.startup_timeout_s=120.0",
            "reward.normalize=fixed",
            f"reward.shift={SHIFT}",
            f"reward.scale={SCALE}",
            "reward.max_reject_rate=0.5",
            "reward.sources=[{kind: rm, weight: 1.0}, {kind: token_function, weight: %s, "
            'path: "raylhf.reward_service.rewards:length_penalty", kwargs: {target_tokens: %d, coef: %s}}, '
            '{kind: token_function, weight: 1.0, path: "%s"}]' % (PENALTY_WEIGHT, TARGET, COEF, SOURCE),
        ],
    )
    rejects = tmp_path_factory.mktemp("rejects") / "rejects.jsonl"
    p = RewardPool(cfg.reward, rm_path=str(rm_checkpoint), ref_path=str(tiny_checkpoint), rejects_path=rejects,
                   supervision=cfg.supervision.policy("scorer"))
    yield p
    p.shutdown()


def small_pool(rm_path, tmp_path, supervision=None, **reward):
    """A one-actor pool scoring with the reward model alone, its rejects in `tmp_path/rejects.jsonl`."""
    from raylhf.configs.schema import RewardConfig, SupervisionConfig
    from raylhf.reward_service.pool import RewardPool

    cfg = RewardConfig(num_actors=1, num_cpus=0.5, ref_logprobs=False, **reward)
    policy = SupervisionConfig(scorer={"startup_timeout_s": 120.0, **(supervision or {})}).policy("scorer")
    return RewardPool(cfg, rm_path=str(rm_path), ref_path=None, rejects_path=tmp_path / "rejects.jsonl",
                      supervision=policy)


def counts(pool):
    """The pool's fault counters (`FaultLog.counts`) and its figures (`PoolStats`)."""
    return pool.faults.counts(), pool.stats()


@pytest.fixture(scope="module")
def want(expected):
    """Expected (score, ref_logprobs) of a rollout under the pool's sources (the faulty one gives 0.0 to
    every rollout without its markers) and fixed normalisation."""

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
    before = {name: a.completed for name, a in pool.stats().actors.items()}
    rollouts = make_rollouts(40, seed=10)
    check(pool.score(rollouts), rollouts)  # 5 requests of 8 over 2 actors
    after = pool.stats().actors
    assert all(after[name].completed > before[name] for name in before), "both actors took part"
    assert pool.actor_info[0].details["threads"] == 1 and pool.actor_info[0].details["ref"] == "LlamaForCausalLM"


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
    faults0, stats0 = counts(pool)
    victim = pool.actors["scorer-0"]
    victim.debug_sleep.remote(2.0)  # keeps its queue in flight until the kill
    batches = [make_rollouts(8, seed=40 + i, prefix=f"k{i}-") for i in range(8)]
    ids = [pool.submit(b) for b in batches[:4]]
    assert pool.stats().actors["scorer-0"].in_flight == 2
    ray_session.kill(victim)
    ids += [pool.submit(b) for b in batches[4:]]  # blocks on a full pool while the lost work moves
    got = collect(pool, ids)
    seen = [r.sample_id for rid in ids for r in got[rid]]
    assert sorted(seen) == sorted(r.sample_id for b in batches for r in b)  # all there, none twice
    for rid, batch in zip(ids, batches):
        check(got[rid], batch)
    faults, stats = counts(pool)
    assert faults["scorer_died"] == faults0["scorer_died"] + 1
    assert stats.actors["scorer-0"].restarts == stats0.actors["scorer-0"].restarts + 1
    assert stats.resubmitted >= stats0.resubmitted + 2
    assert pool.actors["scorer-0"] != victim


def test_request_lost_more_than_max_attempts_is_an_error_not_dropped(ray_session, pool, make_rollouts, check):
    victim = pool.actors["scorer-0"]
    victim.debug_sleep.remote(2.0)
    batches = {}
    policy = pool.policy
    pool.policy = dataclasses.replace(policy, max_attempts=1)
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
        pool.policy = policy
    assert len(errors) == 1 and len(got) == 1
    assert errors[0].request_id in batches and errors[0].request_id not in got
    assert re.search(r"lost 1 times \(supervision\.max_attempts\): scorer-0 died during score: ActorDiedError", str(errors[0]))
    (rid, results), = got.items()
    check(results, batches[rid])


def test_hung_actor_hits_the_timeout_and_is_replaced(pool, make_rollouts, check):
    faults0, stats0 = counts(pool)
    pool.actors["scorer-1"].debug_sleep.remote(600.0)
    rollouts = make_rollouts(16, seed=50)
    t0 = time.monotonic()
    check(pool.score(rollouts), rollouts)  # one request per actor; scorer-1's is resubmitted
    elapsed = time.monotonic() - t0
    faults, stats = counts(pool)
    assert faults["scorer_timeout"] == faults0["scorer_timeout"] + 1
    assert stats.actors["scorer-1"].restarts == stats0.actors["scorer-1"].restarts + 1
    assert TIMEOUT_S <= elapsed < 60.0


def test_unscorable_rollouts_are_quarantined_and_the_others_delivered(pool, make_rollouts, vocab, check):
    bos, eos, n_vocab = vocab
    stats0 = pool.stats()
    rollouts = make_rollouts(6, seed=70, prefix="q")
    oov = dataclasses.replace(rollouts[1], response_ids=[7, n_vocab + 5, eos], logprobs=[-1.0] * 3)
    nan = dataclasses.replace(rollouts[4], response_ids=[*NAN_MARKER, eos], logprobs=[-1.0] * 5)
    batch = [rollouts[0], oov, rollouts[2], rollouts[3], nan, rollouts[5]]
    good = [r for r in batch if r is not oov and r is not nan]

    rid = pool.submit(batch)
    got = collect(pool, [rid])
    check(got[rid], good)  # request order, the two rejects left out, nobody scored 0
    check(pool.score(batch), good)  # two requests of 3, one reject in each

    stats = pool.stats()
    assert stats.rejected == stats0.rejected + 4
    by_cause0 = stats0.rejected_by_cause
    assert stats.rejected_by_cause[TOKEN_OUT_OF_VOCAB] == by_cause0.get(TOKEN_OUT_OF_VOCAB, 0) + 2
    assert stats.rejected_by_cause[NONFINITE_FUNCTION_REWARD] == by_cause0.get(NONFINITE_FUNCTION_REWARD, 0) + 2
    assert stats.rollouts_scored == stats0.rollouts_scored + 8
    rows = [json.loads(line) for line in Path(pool.rejects_path).read_text().splitlines()]
    first = [r for r in rows if r["sample_id"] in (oov.sample_id, nan.sample_id)][:2]  # the submit's rejects
    assert [(r["sample_id"], r["cause"]) for r in first] == [
        (oov.sample_id, TOKEN_OUT_OF_VOCAB), (nan.sample_id, NONFINITE_FUNCTION_REWARD)
    ]
    assert first[0]["detail"] == (
        f"response token id {n_vocab + 5} at position 1 is outside the reward model's vocabulary [0, {n_vocab})"
    )
    assert first[1]["detail"] == f"reward function {SOURCE} returned nan"
    assert (first[0]["prompt_id"], first[0]["policy_version"]) == (oov.prompt_id, oov.policy_version)
    assert (first[0]["prompt_ids"], first[0]["response_ids"]) == (oov.prompt_ids, oov.response_ids)
    assert first[0]["time"] > 0


def test_scoring_failure_is_an_error_naming_actor_and_cause(pool, make_rollouts, vocab, check):
    good = make_rollouts(3, seed=60)
    bad = dataclasses.replace(good[0], sample_id="bad", response_ids=[*RAISE_MARKER, vocab[1]], logprobs=[0.0] * 5)
    with pytest.raises(ScoringError) as err:
        pool.score([bad, good[1]])  # a reward function that raises fails the request: not about one rollout
    assert err.value.actor is not None and err.value.actor.startswith("scorer-")
    assert err.value.actor in str(err.value) and f"reward function {SOURCE} raised ValueError" in str(err.value)
    check(pool.score(good), good)  # the pool keeps working; nothing was scored as 0


def test_pool_past_its_reject_rate_stops_the_run(ray_session, rm_checkpoint, tmp_path, make_rollouts, vocab):
    _, eos, n_vocab = vocab

    def spoil(rollouts, bad):
        return [
            dataclasses.replace(r, response_ids=[n_vocab, eos], logprobs=[-1.0] * 2) if i in bad else r
            for i, r in enumerate(rollouts)
        ]

    p = small_pool(rm_checkpoint, tmp_path, max_reject_rate=0.2, reject_rate_min_rollouts=10)
    try:
        assert len(p.score(spoil(make_rollouts(5, seed=80, prefix="a"), {0, 3}))) == 3  # 2 of 5: too few to judge
        assert len(p.score(make_rollouts(10, seed=81, prefix="b"))) == 10  # 2 of 15
        with pytest.raises(ScoringError) as err:
            p.score(spoil(make_rollouts(6, seed=82, prefix="c"), {1, 2, 4}))  # 5 of 21 = 0.238 > 0.2
        for needle in ("reward.max_reject_rate", "5 of 21", "0.2381", "limit 0.2", str(tmp_path / "rejects.jsonl")):
            assert needle in str(err.value), needle
        with pytest.raises(ScoringError, match=r"reward\.max_reject_rate"):
            p.submit(make_rollouts(1, seed=83))  # stopped: no more work is taken
        assert p.stats().rejected == 5
        assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 5
    finally:
        p.shutdown()


def test_replacement_that_fails_to_start_is_retried_with_backoff(
    ray_session, rm_checkpoint, tmp_path, make_rollouts, expected, close
):
    checkpoint, away = tmp_path / "rm", tmp_path / "rm-away"
    shutil.copytree(rm_checkpoint, checkpoint)
    p = small_pool(checkpoint, tmp_path, supervision={"max_consecutive_restarts": 3, "backoff_s": 1.0})
    try:
        checkpoint.rename(away)  # replacements cannot find their model ...

        def bring_back():  # ... until two of them have failed to start
            end = time.monotonic() + 300
            while p.faults.counts()["scorer_start_failures"] < 2 and time.monotonic() < end:
                time.sleep(0.02)
            away.rename(checkpoint)

        restorer = threading.Thread(target=bring_back, daemon=True)
        restorer.start()
        ray_session.kill(p.actors["scorer-0"])
        rollouts = make_rollouts(4, seed=90)
        t0 = time.monotonic()
        scored = p.score(rollouts)
        elapsed = time.monotonic() - t0
        restorer.join(timeout=10)
        assert [s.sample_id for s in scored] == [r.sample_id for r in rollouts]
        assert [s.score for s in scored] == close([expected(r)[0] for r in rollouts])
        faults, stats = counts(p)
        # the death, then two replacements that did not start: one fault record each, three restarts
        assert (faults["scorer_restarts"], faults["scorer_start_failures"]) == (3, 2)
        assert [f.at_start for f in p.faults.faults] == [False, True, True]
        assert stats.actors["scorer-0"].restarts == 3
        assert elapsed >= 1.0 + 2.0  # waited 1 s after the first failed start, 2 s after the second
    finally:
        p.shutdown()


def test_replacement_that_never_starts_is_a_startup_error_after_its_attempts(
    ray_session, rm_checkpoint, tmp_path, make_rollouts
):
    checkpoint = tmp_path / "rm"
    shutil.copytree(rm_checkpoint, checkpoint)
    p = small_pool(checkpoint, tmp_path, supervision={"max_consecutive_restarts": 2, "backoff_s": 0.5})
    try:
        checkpoint.rename(tmp_path / "gone")
        ray_session.kill(p.actors["scorer-0"])
        with pytest.raises(ScorerStartupError) as err:
            p.score(make_rollouts(2, seed=91))
        assert err.value.actor.startswith("scorer-0")
        assert "did not start in 2 attempts (supervision.max_consecutive_restarts)" in str(err.value)
        assert "reward.rm_path: " in str(err.value) and "does not exist" in str(err.value)
        assert p.faults.counts()["scorer_start_failures"] == 2
    finally:
        p.shutdown()


def test_actor_that_cannot_load_its_model_is_a_startup_error(ray_session, tmp_path):
    from raylhf.configs.schema import RewardConfig
    from raylhf.reward_service.pool import RewardPool

    with pytest.raises(ScorerStartupError) as err:
        RewardPool(RewardConfig(), rm_path=str(tmp_path / "missing_rm"), ref_path=None)
    assert err.value.actor == "scorer-0"
    assert "scorer-0" in str(err.value) and "reward.rm_path: " in str(err.value) and "does not exist" in str(err.value)


def test_pool_methods_match_the_scoring_pool_protocol():
    import inspect

    from raylhf.contracts.protocols import ScoringPool
    from raylhf.reward_service.pool import RewardPool

    methods = [m for m in vars(ScoringPool) if not m.startswith("_") and callable(getattr(ScoringPool, m))]
    assert {"submit", "ready", "score", "has_capacity", "stats", "shutdown"} <= set(methods)
    for m in methods:
        assert inspect.signature(getattr(RewardPool, m)) == inspect.signature(getattr(ScoringPool, m)), m


def test_busy_time_runs_from_the_head_of_each_queue_to_the_answer():
    # No Ray: the supervision slot's accounting (the pool's and the generators'), with times chosen by hand. An
    # actor serves its calls in order, so it is busy from when a call reaches the head of its queue until its
    # answer is seen.
    from raylhf.configs.schema import SupervisionConfig
    from raylhf.contracts.supervision import Call, FaultLog, Supervised

    now = [0.0]
    slot = Supervised("scorer", spawn=None, policy=SupervisionConfig().policy("scorer"), faults=FaultLog(),
                      actor=object(), clock=lambda: now[0])

    def dispatch(ref, t):
        slot.calls[ref] = Call("score", ref, t)

    def answer(ref, t):
        now[0] = t
        started = slot.head_started()
        return slot.answered(slot.calls.pop(ref), started)

    dispatch(0, 10.0)
    dispatch(1, 10.5)
    answer(0, 12.0)  # call 0 ran 10.0 -> 12.0
    assert slot.busy_s == 2.0
    answer(1, 13.5)  # call 1 was queued behind it: it started at 12.0, not at its dispatch
    assert slot.busy_s == 2.0 + 1.5
    # Idle from 13.5 to 20.0: a call dispatched then starts at once; idle time is not busy time.
    dispatch(2, 20.0)
    answer(2, 20.25)
    assert slot.busy_s == 3.5 + 0.25
    # Two answers seen by one poll, read in either order, count the interval once: 30.0 -> 34.0.
    dispatch(3, 30.0)
    dispatch(4, 31.0)
    answer(4, 34.0)
    answer(3, 34.0)
    assert slot.busy_s == 3.75 + 4.0 and not slot.calls

"""`PPOLearner.train_step` on hand-made batches with real tiny models, and its Ray actor wrapper.

The policy is the session's tiny random Llama; the value model is built from it as the reward model is
(a scalar head on the same transformer), with the head set by hand where a test needs known values.
Rollouts carry fixed token ids; expected numbers are worked out in the comments.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from raylhf.configs.schema import PPOConfig
from raylhf.contracts.records import Rollout
from raylhf.contracts.snapshot import named_checkpoint_tensors, signature_mismatches, snapshot_tensors
from raylhf.learners import ppo as ppo_module
from raylhf.learners.models import load_causal_lm, load_tokenizer
from raylhf.learners.ppo import PHASES, TIMING_METRICS, PPOLearner
from raylhf.learners.pretrain import pack_documents
from raylhf.learners.reward_model import reward_model_from_policy
from raylhf.learners.rollout_batch import collate
from tests.conftest import CORPUS

PROMPT = [1, 40, 41, 42]  # BOS + three prompt tokens (ids below the tiny vocabulary's size)
GOOD = [50, 51, 2]  # two tokens + EOS
BAD = [60, 61, 2]


def value_checkpoint(policy_path, out_dir, bias: float = 0.0) -> str:
    """A value model initialised like the RM (scalar head on the policy's transformer). The head's weight
    is zero, so V(s) == bias exactly at every position."""
    model = reward_model_from_policy(policy_path, device="cpu")
    with torch.no_grad():
        model.score.bias.fill_(bias)
    model.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared, busy machine two spinning OpenMP
    threads make each step many times slower; restore the setting for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def value_zero(tiny_checkpoint, tmp_path_factory):
    return value_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("value0"), 0.0)


@pytest.fixture(scope="module")
def value_const(tiny_checkpoint, tmp_path_factory):
    return value_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("value07"), 0.7)


@pytest.fixture(scope="module")
def stream(tiny_checkpoint):
    tok = load_tokenizer(tiny_checkpoint)
    docs = tok(CORPUS[:50], add_special_tokens=False)["input_ids"]
    return pack_documents(docs, tok.bos_token_id, tok.eos_token_id)


def make_learner(policy, value, learner_class=PPOLearner, **overrides) -> PPOLearner:
    """A learner on CPU, seed 0; `overrides` are `PPOConfig` fields or `PPOLearner` run-level keywords."""
    settings = dict(lr=1e-3, value_lr=1e-3, kl_coef=0.0, minibatch_size=4, ptx_coef=0.0)
    run = dict(device="cpu", seed=0)
    for key, setting in overrides.items():
        (settings if key in PPOConfig.model_fields else run)[key] = setting
    return learner_class(PPOConfig(**settings), policy, value, **run)


def rollout(response, score=0.0, logprobs=None, ref_logprobs=None, version=0, prompt=PROMPT, i=0) -> Rollout:
    t = len(response)
    return Rollout(
        prompt_id=f"p{i}", prompt_ids=list(prompt), response_ids=list(response),
        logprobs=list(logprobs) if logprobs is not None else [-6.0] * t, policy_version=version,
        finish_reason="eos", score=score, ref_logprobs=list(ref_logprobs) if ref_logprobs is not None else [-6.0] * t,
        sample_id=f"s{i}",
    )


def mixed_batch(n: int, seed: int, version: int = 0) -> list[Rollout]:
    """n rollouts of varied prompt/response lengths with fixed pseudo-random ids, scores and logprobs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = [1] + rng.integers(3, 300, size=int(rng.integers(2, 7))).tolist()
        t = int(rng.integers(1, 9))
        response = rng.integers(3, 300, size=t).tolist()
        out.append(rollout(response, score=float(rng.normal()), logprobs=(-6.0 + 0.3 * rng.normal(size=t)).tolist(),
                           ref_logprobs=(-6.0 + 0.3 * rng.normal(size=t)).tolist(), version=version, prompt=prompt, i=i))
    return out


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_unchanged(before: dict[str, torch.Tensor], model) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p.detach()), f"{name} changed"


def changed(before: dict[str, torch.Tensor], model) -> bool:
    return any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())


# --------------------------------------------------------------------------------------------------


def test_logprobs_align_with_a_manual_forward_and_ignore_padding(tiny_checkpoint, value_zero):
    learner = make_learner(tiny_checkpoint, value_zero)
    batch = mixed_batch(5, seed=1)
    together = learner.logprobs(batch)
    for r, lp in zip(batch, together):
        # Response token t is predicted by the logits at position len(prompt) - 1 + t.
        with torch.no_grad():
            logits = learner.policy(torch.tensor([r.prompt_ids + r.response_ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        p = len(r.prompt_ids)
        manual = [logp[p - 1 + t, tok].item() for t, tok in enumerate(r.response_ids)]
        assert lp == pytest.approx(manual, abs=1e-5)  # batched with padding == alone


def test_zero_advantage_batch_leaves_policy_unchanged(tiny_checkpoint, value_const):
    # Zero advantages by construction: β = 0 (no KL term), γ = 1, and a value model whose head has
    # weight 0 and bias 0.7, so V(s_t) = 0.7 exactly at every token. With every score 0.7:
    #   δ_t = r_t + γ·V_{t+1} - V_t = 0 + 0.7 - 0.7 = 0 for t < T-1, and δ_{T-1} = 0.7 - 0.7 = 0,
    # so A_t = 0 for every λ; whitening maps an all-zero tensor to 0 (0 · 1/sqrt(0 + eps)); returns
    # R_t = A_t + V_t = V_t, so the value loss is 0 too. The surrogate's gradient is A·∇ρ = 0, and AdamW
    # (no weight decay) moves nothing on a zero gradient. Stale behaviour logprobs (IS weights ≠ 1) do
    # not change that: they multiply a zero advantage.
    learner = make_learner(tiny_checkpoint, value_const, kl_coef=0.0, gamma=1.0, lam=0.95, whiten_advantages=True)
    batch = [rollout(GOOD, 0.7, logprobs=[-5.0, -7.0, -6.0]), rollout(BAD, 0.7, i=1),
             rollout([70, 71, 72, 2], 0.7, i=2), rollout([80], 0.7, i=3)] * 2
    policy_before, value_before = params_of(learner.policy), params_of(learner.value_model)
    metrics = learner.train_step(batch)
    assert metrics["optimizer_steps"] == 2 and metrics["skipped_steps"] == 0  # steps were taken...
    assert metrics["policy_grad_norm"] == 0.0 and metrics["value_loss"] == 0.0
    assert_unchanged(policy_before, learner.policy)  # ...and moved nothing
    assert_unchanged(value_before, learner.value_model)

    # Control: the same batch with a score above V does move the policy (the test can fail).
    learner.train_step([rollout(r.response_ids, 1.7 if k % 2 else 0.7, i=k) for k, r in enumerate(batch)])
    assert changed(policy_before, learner.policy)


@pytest.mark.parametrize("poison", ["score", "ref_logprob"])
def test_nan_guard_skips_the_step_and_keeps_weights(tiny_checkpoint, value_zero, poison, caplog):
    learner = make_learner(tiny_checkpoint, value_zero, kl_coef=0.05, adaptive_kl=True, target_kl=1.0, kl_horizon=100)
    batch = mixed_batch(8, seed=2)
    if poison == "score":
        batch[3].score = float("nan")
    else:
        batch[5].ref_logprobs[0] = float("nan")
    policy_before, value_before = params_of(learner.policy), params_of(learner.value_model)
    with caplog.at_level("WARNING", logger="raylhf.learners.policy_value"):
        metrics = learner.train_step(batch)
    # One NaN poisons the whitened advantages (and returns) of the whole batch: both minibatches skip.
    assert metrics["skipped_steps"] == 2 and metrics["optimizer_steps"] == 0
    assert math.isnan(metrics["policy_loss"])
    assert "skipping a PPO minibatch" in caplog.text
    assert_unchanged(policy_before, learner.policy)
    assert_unchanged(value_before, learner.value_model)
    models = learner.models
    assert not models.policy_optimizer.state and not models.value_optimizer.state  # no Adam moments either
    assert math.isfinite(learner.kl_coef)
    if poison == "ref_logprob":
        assert learner.kl_coef == 0.05  # a NaN KL does not reach the controller

    clean = learner.train_step(mixed_batch(8, seed=3))
    assert clean["skipped_steps"] == 0 and clean["optimizer_steps"] == 2
    assert changed(policy_before, learner.policy)


def test_off_policy_weights_on_a_stale_batch(tiny_checkpoint, value_zero):
    # The behaviour logprobs sit below/above the learner's recomputed π_old by known Δ per token:
    # w_t = min(exp(Δ_t), c). β = 0, whitening off, V ≡ 0, γ = λ = 1 make A_t = score = 1 on every token,
    # and at the first (only) minibatch step π_θ = π_old so ρ = 1: policy_loss = -mean_t(w_t · A_t).
    learner = make_learner(tiny_checkpoint, value_zero, kl_coef=0.0, whiten_advantages=False, gamma=1.0, lam=1.0,
                           is_clip_c=2.0, max_staleness=2, minibatch_size=8)
    for _ in range(3):
        learner.publish()
    assert learner.version == 3
    response = [70, 71, 72, 2]
    old = learner.logprobs([rollout(response)])[0]
    delta = [0.5, -1.0, 3.0, 0.0]
    behaviour = [o - d for o, d in zip(old, delta)]
    weights = [math.exp(0.5), math.exp(-1.0), 2.0, 1.0]  # 1.64872, 0.36788, 2 (e^3 truncated), 1
    kept = rollout(response, 1.0, logprobs=behaviour, version=1)  # staleness 3 - 1 = 2 <= 2: kept
    too_old = rollout(response, 1.0, logprobs=behaviour, version=0, i=1)  # staleness 3 > 2: dropped

    metrics = learner.train_step([kept, too_old])
    assert metrics["dropped_stale"] == 1 and metrics["rollouts"] == 1
    assert metrics["staleness_max"] == 2 and metrics["staleness_mean"] == 2
    assert metrics["is_weight_mean"] == pytest.approx(sum(weights) / 4, abs=1e-5)  # 5.01660 / 4 = 1.25415
    assert metrics["is_truncated_frac"] == pytest.approx(1 / 4)
    assert metrics["policy_loss"] == pytest.approx(-sum(weights) / 4, abs=1e-5)

    # Everything too old: nothing to train on, counted, no step.
    assert learner.train_step([too_old])["dropped_stale"] == 1
    with pytest.raises(ValueError, match="future|learner is at"):
        learner.train_step([rollout(response, 1.0, version=4)])


def test_unscored_rollouts_are_an_error(tiny_checkpoint, value_zero):
    learner = make_learner(tiny_checkpoint, value_zero)
    unscored = rollout(GOOD)
    unscored.score = None
    with pytest.raises(ValueError, match="no score"):
        learner.train_step([rollout(BAD), unscored])
    no_ref = rollout(GOOD)
    no_ref.ref_logprobs = None
    with pytest.raises(ValueError, match="no ref_logprobs"):
        learner.train_step([no_ref])


def test_positive_reward_response_becomes_more_likely(tiny_checkpoint, value_zero):
    learner = make_learner(tiny_checkpoint, value_zero, lr=3e-4, kl_coef=0.01, minibatch_size=8)
    pair = [rollout(GOOD), rollout(BAD)]
    ref = learner.logprobs(pair)
    start = [sum(lp) for lp in ref]
    for _ in range(5):
        behaviour = learner.logprobs(pair)  # fresh samples: behaviour == π_old
        batch = [rollout(GOOD, +1.0, behaviour[0], ref[0], i=k) for k in range(4)]
        batch += [rollout(BAD, -1.0, behaviour[1], ref[1], i=4 + k) for k in range(4)]
        metrics = learner.train_step(batch)
        assert metrics["is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    end = [sum(lp) for lp in learner.logprobs(pair)]
    assert end[0] > start[0] + 1.0  # log π(good) rose (by ~4.5 nats here)
    assert end[1] < start[1] - 1.0  # log π(bad) fell (by ~4)


def test_ptx_term(tiny_checkpoint, value_const, stream, monkeypatch):
    with pytest.raises(ValueError, match="pretrain"):
        make_learner(tiny_checkpoint, value_const, ptx_coef=1.0)

    # On a zero-advantage batch (see the test above) the pretraining term is the only gradient.
    batch = [rollout(GOOD, 0.7), rollout(BAD, 0.7, i=1), rollout([70, 2], 0.7, i=2), rollout([80], 0.7, i=3)]
    learner = make_learner(tiny_checkpoint, value_const, ptx_coef=1.0, ptx_per_rl=2, ptx_seq_len=16,
                           pretrain_stream=stream, minibatch_size=2)
    before = params_of(learner.policy)
    metrics = learner.train_step(batch)
    assert metrics["ptx_windows"] == 2 * 4  # 2 minibatches x 2 rollouts x 2 windows per rollout
    # A random model's NLL is about ln(vocab) = ln(372) ~ 5.9.
    assert 0.5 * math.log(372) < metrics["ptx_loss"] < 1.5 * math.log(372)
    assert changed(before, learner.policy)

    def no_windows(*args, **kwargs):
        raise AssertionError("plain PPO drew pretraining windows")

    monkeypatch.setattr("raylhf.learners.ppo.sample_windows", no_windows)
    plain = make_learner(tiny_checkpoint, value_const, ptx_coef=0.0, pretrain_stream=stream, minibatch_size=2)
    before = params_of(plain.policy)
    metrics = plain.train_step(batch)
    assert "ptx_loss" not in metrics and metrics["ptx_windows"] == 0
    assert_unchanged(before, plain.policy)


@pytest.mark.parametrize(("ptx_per_rl", "windows"), [
    (0.25, [1, 1, 1]),  # round(0.25 x 3) = 1, round(0.25 x 1) = 0 -> at least 1
    (0.5, [2, 2, 1]),  # round(1.5) = 2 (half to even), round(0.5) = 0 -> 1
    (2.0, [6, 6, 2]),
])
def test_ptx_windows_per_minibatch(tiny_checkpoint, value_const, stream, monkeypatch, ptx_per_rl, windows):
    # 7 rollouts in minibatches of 3, 3, 1: round(ptx_per_rl x rows) windows each, never fewer than one.
    drawn = []
    real = ppo_module.sample_windows

    def recording(stream_, n, seq_len, rng):
        drawn.append(n)
        return real(stream_, n, seq_len, rng)

    monkeypatch.setattr(ppo_module, "sample_windows", recording)
    learner = make_learner(tiny_checkpoint, value_const, ptx_coef=1.0, ptx_per_rl=ptx_per_rl, ptx_seq_len=16,
                           pretrain_stream=stream, minibatch_size=3)
    metrics = learner.train_step(mixed_batch(7, seed=5))
    assert drawn == windows and metrics["ptx_windows"] == sum(windows)


def _assert_same_steps(first, second, *, n_rollouts: int, seed: int) -> None:
    """Two learners trained in lockstep on the same two batches end with the same metrics (timings aside) and
    weights, up to float rounding."""
    for k in range(2):
        batch = mixed_batch(n_rollouts, seed=seed + k, version=k)
        a, b = first.train_step(batch), second.train_step(batch)
        first.publish()
        second.publish()
        for key in set(a) - set(TIMING_METRICS):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    for model in ("policy", "value_model"):
        for (name, x), y in zip(getattr(first, model).named_parameters(), getattr(second, model).parameters()):
            assert torch.allclose(x, y, atol=1e-5), name


@pytest.mark.parametrize("ppo_epochs", [1, 2])
def test_reusing_the_first_forward_pass_changes_nothing_but_rounding(tiny_checkpoint, value_zero, stream, ppo_epochs):
    # The first minibatch's optimiser step reuses the forward passes that computed its π_old (θ = θ_old there).
    # Recomputing them instead must give the same step: same metrics and weights up to float rounding.
    settings = dict(kl_coef=0.1, minibatch_size=3, ppo_epochs=ppo_epochs, ptx_coef=0.5, ptx_seq_len=16,
                    pretrain_stream=stream)
    reused = make_learner(tiny_checkpoint, value_zero, **settings)
    recomputed = make_learner(tiny_checkpoint, value_zero, **settings)
    recomputed.reuse_first_forward = False
    _assert_same_steps(reused, recomputed, n_rollouts=7, seed=20)


def test_first_minibatch_ratio_is_exactly_one(tiny_checkpoint, value_zero):
    # One minibatch, one epoch: the step's π_θ is the forward pass that gave π_old, so ρ = exp(0) = 1 exactly
    # on every token, and the sampled KL estimate (mean of log π_old - log π_θ) is exactly 0.
    learner = make_learner(tiny_checkpoint, value_zero, kl_coef=0.1, minibatch_size=8)
    metrics = learner.train_step(mixed_batch(8, seed=6))
    assert metrics["ratio_mean"] == 1.0 and metrics["approx_kl"] == 0.0 and metrics["clipfrac"] == 0.0


def test_microbatches_group_rows_of_similar_length():
    # prompt 4 tokens + responses of 1, 6, 2, 5, 3 tokens: lengths 5, 10, 6, 9, 7
    batch = collate([rollout([50] * t, 0.0, i=i) for i, t in enumerate([1, 6, 2, 5, 3])], 0, torch.device("cpu"))
    rows = torch.tensor([0, 1, 2, 3, 4])
    groups = [g.tolist() for g in batch.microbatches(rows, 20)]
    # longest first: 10 + 9 -> 2 x 10 = 20 fits, a third row would make 30; then 7 + 6 (2 x 7 = 14) + 5 (3 x 7 = 21 > 20)
    assert groups == [[1, 3], [4, 2], [0]]
    assert [g.tolist() for g in batch.microbatches(rows, 0)] == [[0, 1, 2, 3, 4]]  # 0: one group
    assert [g.tolist() for g in batch.microbatches(rows, 3)] == [[1], [3], [4], [2], [0]]  # too long: one row each
    assert [g.tolist() for g in batch.microbatches(torch.tensor([4, 0]), 100)] == [[4, 0]]  # row ids, not positions


@pytest.mark.parametrize("microbatch_tokens", [16, 40])
def test_microbatches_give_the_minibatch_update(tiny_checkpoint, value_zero, stream, microbatch_tokens):
    # Token-weighted micro-batch losses add up to the minibatch's token-mean loss: the same gradient, so the same
    # metrics and weights (up to float rounding) as one forward pass per minibatch, over two epochs with ptx.
    # A small learning rate keeps every value far from its clip boundary, where float rounding could flip a
    # token's vf_clipfrac vote (a count, not a smooth function of the weights).
    settings = dict(kl_coef=0.1, minibatch_size=4, ppo_epochs=2, ptx_coef=0.5, ptx_seq_len=16, pretrain_stream=stream,
                    lr=1e-4, value_lr=1e-4)
    whole = make_learner(tiny_checkpoint, value_zero, **settings)
    split = make_learner(tiny_checkpoint, value_zero, microbatch_tokens=microbatch_tokens, **settings)
    collated = collate(mixed_batch(9, seed=30), split.pad_id, split.device)
    assert len(split._plan(collated, torch.arange(4))[0]) > 1  # a minibatch really is split
    _assert_same_steps(whole, split, n_rollouts=9, seed=30)


def test_attention_kernels_give_the_same_step(tiny_checkpoint, value_zero):
    eager = make_learner(tiny_checkpoint, value_zero, kl_coef=0.1, attention="auto")  # CPU: eager
    fused = make_learner(tiny_checkpoint, value_zero, kl_coef=0.1, attention="sdpa")
    assert eager.policy.config._attn_implementation == eager.value_model.config._attn_implementation == "eager"
    assert fused.policy.config._attn_implementation == "sdpa"
    batch = mixed_batch(8, seed=8)
    a, b = eager.train_step(batch), fused.train_step(batch)
    for key in set(a) - set(TIMING_METRICS):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    for (name, x), y in zip(eager.policy.named_parameters(), fused.policy.parameters()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_train_step_reports_its_phase_times(tiny_checkpoint, value_zero, stream):
    learner = make_learner(tiny_checkpoint, value_zero, ptx_coef=0.5, ptx_seq_len=16, pretrain_stream=stream)
    metrics = learner.train_step(mixed_batch(8, seed=7))
    times = [metrics[f"time_{phase}_s"] for phase in PHASES]
    assert all(t > 0 for t in times)  # every phase ran (with ptx on)
    assert sum(times) <= metrics["step_time_s"]  # disjoint intervals inside the step


def test_publish_increments_version_and_round_trips_weights(tiny_checkpoint, value_zero):
    learner = make_learner(tiny_checkpoint, value_zero)
    assert learner.version == 0
    version, snapshot = learner.publish()
    assert version == learner.version == snapshot.version == 1
    expected = dict(named_checkpoint_tensors(learner.policy))
    got = dict(snapshot_tensors(snapshot))
    assert list(got) == list(expected)  # HF names, tied lm_head carried once (as the embedding)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="pt") as f:
        on_disk = [(n, tuple(f.get_slice(n).get_shape()), "float32") for n in f.keys()]
    assert signature_mismatches(snapshot, on_disk) == []  # what an engine started from the checkpoint expects

    learner.train_step(mixed_batch(4, seed=4))
    version, snapshot = learner.publish()
    assert version == 2
    trained = dict(named_checkpoint_tensors(learner.policy))
    assert all(torch.equal(t, trained[n]) for n, t in snapshot_tensors(snapshot))

    half = make_learner(tiny_checkpoint, value_zero, snapshot_dtype="bfloat16")
    _, snapshot = half.publish()
    assert {s.dtype for s in snapshot.specs} == {"bfloat16"}
    policy = dict(named_checkpoint_tensors(half.policy))
    assert all(torch.equal(t, policy[n].to(torch.bfloat16)) for n, t in snapshot_tensors(snapshot))


def test_resume_reproduces_the_uninterrupted_run(tiny_checkpoint, value_zero, stream, tmp_path):
    # Everything with state: Adam moments, adaptive β, version, the RNG behind minibatch order (2 epochs,
    # uneven minibatches) and ptx windows.
    settings = dict(kl_coef=0.1, adaptive_kl=True, target_kl=0.5, kl_horizon=50, ppo_epochs=2, minibatch_size=3,
                    ptx_coef=0.5, ptx_per_rl=1, ptx_seq_len=16, pretrain_stream=stream, max_staleness=1)
    batches = [mixed_batch(7, seed=10 + k, version=k) for k in range(3)]

    def run(learner, steps):
        out = None
        for k in steps:
            out = learner.train_step(batches[k])
            learner.publish()
        return out

    straight = make_learner(tiny_checkpoint, value_zero, **settings)
    expected = run(straight, range(3))

    first = make_learner(tiny_checkpoint, value_zero, **settings)
    run(first, range(2))
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = make_learner(tiny_checkpoint, value_zero, **settings)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.version == 2 and resumed.kl_coef == first.kl_coef != 0.1
    got = run(resumed, [2])

    assert set(got) == set(expected)
    for key in set(expected) - set(TIMING_METRICS):
        assert got[key] == pytest.approx(expected[key], abs=1e-6, nan_ok=True), key
    for (name, a), b in zip(straight.policy.named_parameters(), resumed.policy.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert (tmp_path / "ckpt" / "policy" / "tokenizer.json").exists()


def test_ray_actor_trains_and_publishes(ray_session, tiny_checkpoint, value_zero):
    from raylhf.learners.ppo_actor import PPOLearnerActor  # deferred: imports Ray, for this slow test only

    ray = ray_session
    cfg = PPOConfig(lr=1e-3, minibatch_size=4, ptx_coef=0.0)
    actor = PPOLearnerActor.options(num_cpus=0.5).remote(cfg, str(tiny_checkpoint), value_zero, name="learner-test",
                                                         device="cpu", torch_threads=1)
    try:
        info = ray.get(actor.ready.remote(), timeout=120)
        assert info.name == "learner-test" and info.details["version"] == 0
        metrics = ray.get(actor.train_step.remote(mixed_batch(4, seed=5)), timeout=120)
        assert metrics["optimizer_steps"] == 1
        refs = []
        for expected_version in (1, 2, 3):
            version, ref = ray.get(actor.publish.remote(), timeout=60)
            assert isinstance(ref, ray.ObjectRef) and version == expected_version
            refs.append(ref)
        snapshot = ray.get(refs[-1], timeout=60)
        assert snapshot.version == 3 == ray.get(actor.version.remote(), timeout=60)
        # The published weights are the trained ones, not the checkpoint's.
        initial = dict(named_checkpoint_tensors(load_causal_lm(tiny_checkpoint, device="cpu")))
        assert any(not torch.equal(t, initial[n]) for n, t in snapshot_tensors(snapshot))
        # Refs the actor no longer pins stay readable while the caller holds them.
        assert ray.get(refs[0], timeout=60).version == 1
    finally:
        ray.kill(actor)


def test_hyperparameters_come_from_the_config_section_only():
    # Every PPO hyperparameter is a field of the schema's section, whose defaults and validation are the
    # only ones: the learner takes no keyword that could restate (and drift from) one of them.
    keywords = set(inspect.signature(PPOLearner).parameters)
    assert keywords & set(PPOConfig.model_fields) == set()
    assert {"cfg", "pretrain_stream", "seed", "device", "bf16", "snapshot_dtype"} <= keywords


def test_learner_reads_its_section(tiny_checkpoint, value_zero, stream):
    cfg = PPOConfig().model_copy(update={"lr": 3e-4, "value_lr": 2e-4, "kl_coef": 0.05, "adaptive_kl": True})
    learner = PPOLearner(cfg, tiny_checkpoint, value_zero, pretrain_stream=stream, device="cpu")
    assert learner.kl_coef == 0.05 and type(learner.kl_controller).__name__ == "AdaptiveKLController"
    assert learner.models.policy_optimizer.param_groups[0]["lr"] == 3e-4
    assert learner.models.value_optimizer.param_groups[0]["lr"] == 2e-4
    assert learner.describe()["ptx"] is (PPOConfig().ptx_coef > 0)
    with pytest.raises(ValueError, match="snapshot_dtype"):
        PPOLearner(cfg, tiny_checkpoint, value_zero, pretrain_stream=stream, device="cpu", snapshot_dtype="int8")
    with pytest.raises(ValueError, match="fewer than one window"):
        PPOLearner(cfg.model_copy(update={"ptx_seq_len": 64}), tiny_checkpoint, value_zero,
                   pretrain_stream=stream[:40], device="cpu")


def test_output_layer_on_response_positions_and_fused_adamw_change_nothing_but_rounding(tiny_checkpoint, value_zero,
                                                                                      stream):
    # The output layer run on the response positions' hidden states gives the logits the full forward gathers at
    # those positions; the fused AdamW kernel takes the steps the foreach one does.
    settings = dict(kl_coef=0.1, minibatch_size=3, ppo_epochs=2, ptx_coef=0.5, ptx_seq_len=16, pretrain_stream=stream)
    fast = make_learner(tiny_checkpoint, value_zero, **settings)
    assert fast.models.decoder_and_head is not None
    baseline = type("Baseline", (PPOLearner,), {"split_output_layer": False, "fused_optimizer": False})
    slow = make_learner(tiny_checkpoint, value_zero, learner_class=baseline, **settings)
    assert slow.models.decoder_and_head is None
    _assert_same_steps(fast, slow, n_rollouts=7, seed=40)

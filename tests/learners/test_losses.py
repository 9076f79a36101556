"""Loss and advantage functions against values worked out by hand, plus invariance tests.

Every expected number is derived in the comments with plain arithmetic (python `math` evaluates it);
none comes from the function under test. Tensors are float64 so tolerances can be tight.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raylhf.learners.lm_losses import entropy_from_logits, lm_loss, token_logprobs
from raylhf.learners.losses import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_penalty,
    kl_shaped_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    truncated_importance_weights,
    value_loss,
)
from tests.learners.handworked import close, pad, pad_mask, t

NAN = float("nan")
INF = float("inf")


# ------------------------------------------------------------------------------------------------
# masked reductions


def test_masked_mean_ignores_padding():
    x = t([[1.0, 2.0, 3.0], [4.0, NAN, 1e9]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # valid: 1, 2, 3, 4 -> 10 / 4 = 2.5
    assert close(masked_mean(x, mask), 2.5)
    # per row: (1+2+3)/3 = 2 ; 4/1 = 4
    assert close(masked_mean(x, mask, dim=1), [2.0, 4.0])
    # bool mask behaves like the float one
    assert close(masked_mean(x, mask.bool()), 2.5)
    # a fully padded row gives 0, not nan
    assert close(masked_mean(x, t([[1, 1, 1], [0, 0, 0]]), dim=1), [2.0, 0.0])


def test_masked_var():
    x = t([[1.0, 2.0, 3.0], [4.0, NAN, -7.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5
    # unbiased 5 / 3, biased 5 / 4
    assert close(masked_var(x, mask), 5 / 3)
    assert close(masked_var(x, mask, unbiased=False), 5 / 4)


def test_masked_whiten_with_padding():
    x = t([[1.0, 2.0, 3.0], [4.0, NAN, 100.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # mean 2.5, unbiased var 5/3 (above), std = sqrt(5/3 + 1e-8)
    std = math.sqrt(5 / 3 + 1e-8)
    expected = [[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]]  # padding -> 0
    out = masked_whiten(x, mask)
    assert close(out, expected)
    # shift_mean=False adds the mean 2.5 back at valid positions; padding still 0
    expected_keep = [[-1.5 / std + 2.5, -0.5 / std + 2.5, 0.5 / std + 2.5], [1.5 / std + 2.5, 0.0, 0.0]]
    assert close(masked_whiten(x, mask, shift_mean=False), expected_keep)
    # appending more padding does not change the valid part
    out_padded = masked_whiten(pad(x, 2, 1e6), pad_mask(mask, 2))
    assert close(out_padded[:, :3], expected)
    assert close(out_padded[:, 3:], [[0.0, 0.0], [0.0, 0.0]])


def test_masked_var_needs_two_elements():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(t([[1.0, 2.0]]), t([[1, 0]]))


# ------------------------------------------------------------------------------------------------
# KL


def test_kl_estimators_by_hand():
    logprobs = t([[math.log(0.5), math.log(0.2), math.log(0.9)]])
    ref_logprobs = t([[math.log(0.25), math.log(0.4), math.log(0.9)]])
    # log_ratio = [ln 2, ln 0.5, 0] = [0.693147, -0.693147, 0]
    ln2 = math.log(2.0)
    # k1 = log_ratio
    assert close(kl_penalty(logprobs, ref_logprobs, "k1"), [[ln2, -ln2, 0.0]])
    # k2 = 0.5 * log_ratio^2 = [0.240227, 0.240227, 0]
    assert close(kl_penalty(logprobs, ref_logprobs, "k2"), [[0.5 * ln2**2, 0.5 * ln2**2, 0.0]])
    # k3 = exp(-lr) - 1 + lr:  0.5 - 1 + 0.693147 = 0.193147 ; 2 - 1 - 0.693147 = 0.306853 ; 0
    assert close(kl_penalty(logprobs, ref_logprobs, "k3"), [[0.5 - 1 + ln2, 2 - 1 - ln2, 0.0]])
    # default is k1
    assert close(kl_penalty(logprobs, ref_logprobs), [[ln2, -ln2, 0.0]])


def test_k1_and_k3_are_unbiased_for_kl_pi_ref():
    # Exact expectation over a 3-token vocabulary with samples from pi:
    # E_pi[k1] = E_pi[k3] = KL(pi || ref) = sum pi ln(pi / ref); k3 is also >= 0 per token.
    pi = [0.5, 0.2, 0.3]
    ref = [0.25, 0.4, 0.35]
    kl = sum(p * math.log(p / r) for p, r in zip(pi, ref))  # 0.346574 - 0.138629 - 0.046245 = 0.161700
    lp, lr = t([[math.log(p) for p in pi]]), t([[math.log(r) for r in ref]])
    weights = t([pi])
    assert close((weights * kl_penalty(lp, lr, "k1")).sum().item(), kl)
    k3 = kl_penalty(lp, lr, "k3")
    assert close((weights * k3).sum().item(), kl)
    assert bool((k3 >= 0).all())
    # k2 is biased: its expectation differs from the KL here
    assert abs((weights * kl_penalty(lp, lr, "k2")).sum().item() - kl) > 1e-3


def test_kl_unknown_estimator():
    x = t([[0.0]])
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(x, x, "k4")


# ------------------------------------------------------------------------------------------------
# per-token rewards (InstructGPT Eq. 2)

# beta = 0.1; four rows of T = 4 with garbage at masked positions:
#   row 0: 3 valid tokens, so the last valid token (t=2) is not the last column
#   row 1: 2 valid tokens
#   row 2: a hole at t=1 (the last valid token is still t=2)
#   row 3: no valid token at all
REWARD_SCORES = [1.0, -0.5, 0.3, 2.0]
REWARD_LOGPROBS = [[-1.0, -2.0, -0.5, NAN], [-0.3, -1.2, NAN, INF], [-0.4, 5.0, -0.9, 0.0], [NAN, NAN, NAN, NAN]]
REWARD_REF = [[-1.5, -1.0, -0.5, 1.0], [-0.1, -1.7, 7.0, 0.0], [-0.2, 0.0, -1.0, 3.0], [0.0, 0.0, 0.0, -INF]]
REWARD_MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_kl_shaped_rewards_by_hand_k1():
    logprobs = t(REWARD_LOGPROBS).requires_grad_(True)
    rewards, kl = kl_shaped_rewards(t(REWARD_SCORES), logprobs, t(REWARD_REF), t(REWARD_MASK), 0.1, "k1")
    # k1 = logprobs - ref_logprobs at valid tokens, 0 elsewhere:
    #   row 0: [-1.0+1.5, -2.0+1.0, -0.5+0.5] = [0.5, -1.0, 0.0]
    #   row 1: [-0.3+0.1, -1.2+1.7]           = [-0.2, 0.5]
    #   row 2: [-0.4+0.2, (hole), -0.9+1.0]   = [-0.2, 0, 0.1]
    #   row 3: nothing valid                  = 0
    assert close(kl, [[0.5, -1.0, 0.0, 0.0], [-0.2, 0.5, 0.0, 0.0], [-0.2, 0.0, 0.1, 0.0], [0.0] * 4])
    # r_t = -0.1 * KL_t, plus the score at the last valid token:
    #   row 0: [-0.05, 0.1, 0.0 + 1.0]         (score at t=2, the fourth column stays 0)
    #   row 1: [0.02, -0.05 - 0.5 = -0.55]     (score at t=1)
    #   row 2: [0.02, 0, -0.01 + 0.3 = 0.29]   (score at t=2, after the hole)
    #   row 3: all 0 (no token to carry the score 2.0)
    expected = [[-0.05, 0.1, 1.0, 0.0], [0.02, -0.55, 0.0, 0.0], [0.02, 0.0, 0.29, 0.0], [0.0] * 4]
    assert close(rewards, expected)
    # Each row sums to score - beta * sum_t KL_t: 1.0 - 0.1*(-0.5) = 1.05 ; -0.5 - 0.1*0.3 = -0.53 ;
    # 0.3 - 0.1*(-0.1) = 0.31
    assert close(rewards.sum(dim=1)[:3], [1.05, -0.53, 0.31])
    assert not rewards.requires_grad and not kl.requires_grad  # constants of the PPO losses


def test_kl_shaped_rewards_k3_and_zero_beta():
    lp, ref, mask, scores = t(REWARD_LOGPROBS), t(REWARD_REF), t(REWARD_MASK), t(REWARD_SCORES)
    rewards, kl = kl_shaped_rewards(scores, lp, ref, mask, 0.1, "k3")
    # k3 = e^-x - 1 + x of the log-ratio x, row 0: x = 0.5, -1.0, 0.0
    #   e^-0.5 - 0.5 = 0.606531 - 0.5 = 0.106531 ; e^1 - 2 = 0.718282 ; 0
    k3 = [math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0, 0.0]
    assert close(kl[0, :3], k3)
    # rewards row 0: [-0.0106531, -0.0718282, 0 + 1.0, 0]
    assert close(rewards[0], [-0.1 * k3[0], -0.1 * k3[1], 1.0, 0.0])
    # beta = 0: the score alone, at the last valid token of each row
    rewards0, _ = kl_shaped_rewards(scores, lp, ref, mask, 0.0)
    assert close(rewards0, [[0.0, 0.0, 1.0, 0.0], [0.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.3, 0.0], [0.0] * 4])


def test_kl_shaped_rewards_invariant_to_appended_padding():
    lp, ref, mask, scores = t(REWARD_LOGPROBS), t(REWARD_REF), t(REWARD_MASK), t(REWARD_SCORES)
    base = kl_shaped_rewards(scores, lp, ref, mask, 0.1)
    padded = kl_shaped_rewards(scores, pad(lp, 3, NAN), pad(ref, 3, 1e6), pad_mask(mask, 3), 0.1)
    for a, b in zip(padded, base):
        assert close(a[:, :4], b.tolist(), 1e-12)
        assert bool((a[:, 4:] == 0).all())


def test_kl_shaped_rewards_rejects_bad_shapes():
    x = t([[0.0, 1.0]])
    with pytest.raises(ValueError, match="scores"):
        kl_shaped_rewards(t([1.0, 2.0]), x, x, t([[1, 1]]), 0.1)
    with pytest.raises(ValueError, match="shape"):
        kl_shaped_rewards(t([1.0]), x, t([[0.0]]), t([[1, 1]]), 0.1)


# ------------------------------------------------------------------------------------------------
# GAE


def test_gae_by_hand_with_padding():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = t([[0.1, -0.2, 1.0], [0.0, 2.0, NAN], [0.1, 1e6, 1.0]])
    values = t([[0.5, 0.4, 0.3], [1.0, 0.5, NAN], [0.5, -1e6, 0.3]])
    mask = t([[1, 1, 1], [1, 1, 0], [1, 0, 1]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # row 0 (no padding):
    #   d2 = 1.0 + 0.9*0 - 0.3 = 0.7              A2 = 0.7
    #   d1 = -0.2 + 0.9*0.3 - 0.4 = -0.33         A1 = -0.33 + 0.72*0.7 = 0.174
    #   d0 = 0.1 + 0.9*0.4 - 0.5 = -0.04          A0 = -0.04 + 0.72*0.174 = 0.08528
    #   returns = A + V = [0.58528, 0.574, 1.0]
    # row 1 (right padding; value after the last valid token is 0):
    #   d1 = 2.0 + 0 - 0.5 = 1.5                  A1 = 1.5
    #   d0 = 0.0 + 0.9*0.5 - 1.0 = -0.55          A0 = -0.55 + 0.72*1.5 = 0.53
    #   returns = [1.53, 2.0, 0]
    # row 2 (a hole in the middle is skipped: same as the row [0.1, 1.0] / [0.5, 0.3]):
    #   d2 = 1.0 - 0.3 = 0.7                      A2 = 0.7
    #   d0 = 0.1 + 0.9*0.3 - 0.5 = -0.13          A0 = -0.13 + 0.72*0.7 = 0.374
    #   returns = [0.874, 0, 1.0]
    assert close(adv, [[0.08528, 0.174, 0.7], [0.53, 1.5, 0.0], [0.374, 0.0, 0.7]])
    assert close(ret, [[0.58528, 0.574, 1.0], [1.53, 2.0, 0.0], [0.874, 0.0, 1.0]])
    assert not adv.requires_grad and not ret.requires_grad


def _gae_reference(rewards, values, mask, gamma, lam):
    """Per-row python loop over the valid tokens only."""
    batch, length = len(rewards), len(rewards[0])
    adv = [[0.0] * length for _ in range(batch)]
    ret = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        idx = [i for i in range(length) if mask[b][i]]
        next_v, next_a = 0.0, 0.0
        for i in reversed(idx):
            delta = rewards[b][i] + gamma * next_v - values[b][i]
            a = delta + gamma * lam * next_a
            adv[b][i], ret[b][i] = a, a + values[b][i]
            next_v, next_a = values[b][i], a
    return adv, ret


def test_gae_matches_python_loop():
    gen = torch.Generator().manual_seed(0)
    batch, length = 6, 9
    rewards = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    lengths = [9, 1, 5, 0, 7, 3]
    mask = torch.zeros(batch, length, dtype=torch.float64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    mask[4, 2] = 0  # one row with a hole
    for gamma, lam in [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (1.0, 1.0)]:
        adv, ret = gae(rewards, values, mask, gamma, lam)
        ref_adv, ref_ret = _gae_reference(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
        assert close(adv, ref_adv, 1e-9)
        assert close(ret, ref_ret, 1e-9)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    # gamma = lam = 1: A_t = sum_{s>=t} r_s - V_t (telescoping), independent of the other values.
    rewards = t([[0.0, 0.0, 2.0]])
    values = t([[0.3, -0.1, 0.7]])
    adv, ret = gae(rewards, values, t([[1, 1, 1]]), 1.0, 1.0)
    assert close(adv, [[2.0 - 0.3, 2.0 + 0.1, 2.0 - 0.7]])
    assert close(ret, [[2.0, 2.0, 2.0]])


def test_gae_rejects_bad_arguments():
    x = t([[0.0, 1.0]])
    with pytest.raises(ValueError, match="gamma"):
        gae(x, x, t([[1, 1]]), 1.5, 0.9)
    with pytest.raises(ValueError, match="shape"):
        gae(x, t([[0.0]]), t([[1, 1]]), 1.0, 0.9)


# ------------------------------------------------------------------------------------------------
# PPO policy loss

# eps = 0.2; ratios and advantages of five tokens:
#   tok  rho  A    rho*A   clip(rho)*A   -min(...)                 clip active?
#   0    1.5  +1   1.5     1.2           -1.2  (clipped term)      yes (A>0, rho>1+eps)
#   1    0.5  +1   0.5     0.8           -0.5  (unclipped)         no  (pulled back up)
#   2    0.5  -1   -0.5    -0.8          0.8   (clipped term)      yes (A<0, rho<1-eps)
#   3    1.5  -1   -1.5    -1.2          1.5   (unclipped)         no  (pulled back down)
#   4    1.1  +2   2.2     2.2           -2.2  (equal, in range)   no
#   loss = (-1.2 - 0.5 + 0.8 + 1.5 - 2.2) / 5 = -1.6 / 5 = -0.32
RATIOS = [1.5, 0.5, 0.5, 1.5, 1.1]
ADVANTAGES = [1.0, 1.0, -1.0, -1.0, 2.0]


def _ppo_inputs():
    old = t([[-1.0, -2.0, -0.5, -3.0, -1.5]])
    new = (old + t([[math.log(r) for r in RATIOS]])).requires_grad_(True)
    return new, old, t([ADVANTAGES]), t([[1, 1, 1, 1, 1]])


def test_ppo_policy_loss_clipping_by_hand():
    new, old, adv, mask = _ppo_inputs()
    loss, metrics = ppo_policy_loss(new, old, adv, mask, clip_eps=0.2)
    assert close(loss.item(), -0.32)
    # clipfrac: tokens 0 and 2 -> 2/5
    assert close(metrics["clipfrac"], 0.4)
    # ratio mean (1.5 + 0.5 + 0.5 + 1.5 + 1.1) / 5 = 1.02, max 1.5
    assert close(metrics["ratio_mean"], 1.02)
    assert close(metrics["ratio_max"], 1.5)
    # approx_kl = mean(rho - 1 - ln rho):
    #   1.5 -> 0.5 - 0.405465 = 0.094535 ; 0.5 -> -0.5 + 0.693147 = 0.193147 ; 1.1 -> 0.1 - 0.095310 = 0.004690
    kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))) / 5  # 0.115971
    assert close(metrics["approx_kl"], kl)
    assert all(isinstance(v, float) for v in metrics.values())
    # gradient wrt logprobs: 0 where clipping is active; d(-A rho)/d logprob = -A rho, / 5 tokens
    #   tok0: 0 ; tok1: -0.5/5 = -0.1 ; tok2: 0 ; tok3: 1.5/5 = 0.3 ; tok4: -2.2/5 = -0.44
    loss.backward()
    assert close(new.grad, [[0.0, -0.1, 0.0, 0.3, -0.44]])


def test_ppo_policy_loss_positive_advantage_only():
    # A > 0 alone: tokens 0 and 1 of the table: (-1.2 - 0.5) / 2 = -0.85, clipfrac 1/2
    new, old, adv, mask = _ppo_inputs()
    loss, metrics = ppo_policy_loss(new[:, :2], old[:, :2], adv[:, :2], mask[:, :2], 0.2)
    assert close(loss.item(), -0.85)
    assert close(metrics["clipfrac"], 0.5)


def test_ppo_policy_loss_negative_advantage_only():
    # A < 0 alone: tokens 2 and 3 of the table: (0.8 + 1.5) / 2 = 1.15, clipfrac 1/2
    new, old, adv, mask = _ppo_inputs()
    loss, metrics = ppo_policy_loss(new[:, 2:4], old[:, 2:4], adv[:, 2:4], mask[:, 2:4], 0.2)
    assert close(loss.item(), 1.15)
    assert close(metrics["clipfrac"], 0.5)


def test_ppo_policy_loss_is_weights_scale_per_token_and_are_constants():
    new, old, adv, mask = _ppo_inputs()
    weights = t([[0.5, 2.0, 1.0, 0.0, 3.0]]).requires_grad_(True)
    loss, _ = ppo_policy_loss(new, old, adv, mask, 0.2, is_weights=weights)
    # per-token losses [-1.2, -0.5, 0.8, 1.5, -2.2] * w = [-0.6, -1.0, 0.8, 0.0, -6.6]; sum -7.4; / 5 = -1.48
    assert close(loss.item(), -1.48)
    loss.backward()
    assert weights.grad is None
    # gradient scales by w too: [0, -0.1*2, 0, 0.3*0, -0.44*3]
    assert close(new.grad, [[0.0, -0.2, 0.0, 0.0, -1.32]])


def test_ppo_policy_loss_minibatch_split_token_weighted():
    # token-level mean: the full-batch loss is the token-count-weighted mean of the minibatch losses
    gen = torch.Generator().manual_seed(1)
    new = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.3
    old = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = t([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    full, _ = ppo_policy_loss(new, old, adv, mask, 0.2)
    parts = [ppo_policy_loss(new[s], old[s], adv[s], mask[s], 0.2)[0] for s in (slice(0, 2), slice(2, 4))]
    counts = [8.0, 4.0]
    assert close(full.item(), (parts[0].item() * counts[0] + parts[1].item() * counts[1]) / 12.0, 1e-12)
    # and the plain mean of the two is different here (rows of unequal length), so the test can fail
    assert abs(full.item() - (parts[0].item() + parts[1].item()) / 2) > 1e-6


def test_ppo_policy_loss_shape_mismatch():
    x = t([[0.0, 0.0]])
    with pytest.raises(ValueError, match="shape"):
        ppo_policy_loss(x, x, t([[0.0]]), t([[1, 1]]), 0.2)


# ------------------------------------------------------------------------------------------------
# value loss


def test_value_loss_clipping_by_hand():
    values = t([[1.0, 1.0, 0.3]]).requires_grad_(True)
    old_values = t([[0.5, 0.5, 0.4]])
    returns = t([[1.2, 0.0, 0.0]])
    mask = t([[1, 1, 1]])
    loss, metrics = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    # tok0: V_clip = 0.5 + clip(0.5) = 0.7 ; (1.0-1.2)^2 = 0.04 ; (0.7-1.2)^2 = 0.25 -> 0.25 (clipped)
    # tok1: V_clip = 0.7                   ; (1.0-0.0)^2 = 1.0  ; (0.7-0.0)^2 = 0.49 -> 1.0
    # tok2: V_clip = 0.4 + clip(-0.1) = 0.3; 0.09 both                               -> 0.09
    # loss = 0.5 * (0.25 + 1.0 + 0.09) / 3 = 0.5 * 1.34 / 3 = 0.2233333
    assert close(loss.item(), 0.5 * 1.34 / 3)
    assert close(metrics["vf_clipfrac"], 1 / 3)
    assert close(metrics["value_mean"], 2.3 / 3)  # (1 + 1 + 0.3) / 3
    # gradient: tok0 clipped -> 0 ; tok1: 0.5/3 * 2*(1-0) = 1/3 ; tok2: 0.5/3 * 2*0.3 = 0.1
    loss.backward()
    assert close(values.grad, [[0.0, 1 / 3, 0.1]])


# ------------------------------------------------------------------------------------------------
# LM loss, log-probs, entropy


def _lm_inputs():
    # row 0: logits [0, ln 2, ln 5] -> softmax [1/8, 2/8, 5/8]; label 2 -> p = 5/8
    # row 1: logits [0, 0, 0]       -> softmax [1/3, 1/3, 1/3]; label 1 -> p = 1/3
    # row 2: padding (label -100)
    logits = t([[[0.0, math.log(2.0), math.log(5.0)], [0.0, 0.0, 0.0], [3.0, -2.0, 50.0]]])
    labels = torch.tensor([[2, 1, -100]])
    mask = t([[1, 1, 0]])
    return logits, labels, mask


def test_lm_loss_by_hand():
    logits, labels, mask = _lm_inputs()
    loss, metrics = lm_loss(logits, labels, mask)
    # nll = (-ln 5/8 - ln 1/3) / 2 = (0.470004 + 1.098612) / 2 = 0.784308 ; ppl = exp(nll) = sqrt(4.8)
    nll = (math.log(8 / 5) + math.log(3.0)) / 2
    assert close(loss.item(), nll)
    assert close(metrics["nll"], nll)
    assert close(metrics["ppl"], math.sqrt(4.8))
    assert metrics["tokens"] == 2.0
    # matches torch's cross entropy on the valid tokens
    assert close(F.cross_entropy(logits[0, :2], labels[0, :2]).item(), nll)


def test_token_logprobs_and_entropy_by_hand():
    logits, labels, _ = _lm_inputs()
    lp = token_logprobs(logits[:, :2], labels[:, :2])
    assert close(lp, [[math.log(5 / 8), math.log(1 / 3)]])
    # H([1/8, 1/4, 5/8]) = 1/8 ln 8 + 1/4 ln 4 + 5/8 ln 8/5 = 0.259930 + 0.346574 + 0.293752 = 0.900256
    h0 = math.log(8) / 8 + math.log(4) / 4 + 5 / 8 * math.log(8 / 5)
    assert close(entropy_from_logits(logits[:, :2]), [[h0, math.log(3.0)]])


def test_token_logprobs_upcasts_16_bit_logits():
    logits, labels, _ = _lm_inputs()
    lp = token_logprobs(logits[:, :2].to(torch.bfloat16), labels[:, :2])
    assert lp.dtype == torch.float32
    with pytest.raises(ValueError, match="align"):
        token_logprobs(logits, labels[:, :2])


# ------------------------------------------------------------------------------------------------
# off-policy correction and value diagnostics


def test_truncated_importance_weights_by_hand():
    old = t([[-1.0, -2.0, -0.5, -3.0, NAN]])
    behaviour = t([[-1.5, -1.0, -3.5, -3.0, 1e6]])
    mask = t([[1, 1, 1, 1, 0]])
    # delta = old - behaviour = [0.5, -1.0, 3.0, 0.0] at the valid tokens; with c = 2:
    #   min(e^0.5, 2) = 1.648721, min(e^-1, 2) = 0.367879, min(e^3 = 20.09, 2) = 2, min(e^0, 2) = 1; padding 0
    weights, metrics = truncated_importance_weights(old, behaviour, mask, 2.0)
    assert close(weights, [[math.exp(0.5), math.exp(-1.0), 2.0, 1.0, 0.0]])
    # mean (1.648721 + 0.367879 + 2 + 1) / 4 = 5.016600 / 4 = 1.254150 ; one of four tokens truncated
    assert close(metrics["is_weight_mean"], (math.exp(0.5) + math.exp(-1.0) + 3.0) / 4)
    assert close(metrics["is_truncated_frac"], 0.25)
    # c = 1 (IMPALA's choice): [1, 0.367879, 1, 1]; ratios above 1: e^0.5 and e^3 (e^0 = 1 is not) -> 2/4
    weights, metrics = truncated_importance_weights(old, behaviour, mask, 1.0)
    assert close(weights, [[1.0, math.exp(-1.0), 1.0, 1.0, 0.0]])
    assert close(metrics["is_weight_mean"], (3.0 + math.exp(-1.0)) / 4)  # 0.841970
    assert close(metrics["is_truncated_frac"], 0.5)
    with pytest.raises(ValueError, match="> 0"):
        truncated_importance_weights(old, behaviour, mask, 0.0)


def test_explained_variance_by_hand():
    mask = t([[1, 1, 1], [1, 0, 0]])
    returns = t([[1.0, 2.0, 3.0], [4.0, NAN, 1e9]])
    # valid returns R = [1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, Var[R] = 5/3
    # V = [1.5, 2, 2.5, 4]: R - V = [-0.5, 0, 0.5, 0], mean 0, Var = 0.5/3 ; EV = 1 - (0.5/3)/(5/3) = 0.9
    assert close(explained_variance(t([[1.5, 2.0, 2.5], [4.0, NAN, -1e9]]), returns, mask), 0.9)
    # V = R: 1 ; constant V = 2.5: R - V varies as R does, 0
    assert close(explained_variance(returns, returns, mask), 1.0)
    assert close(explained_variance(torch.full((2, 3), 2.5, dtype=torch.float64), returns, mask), 0.0)
    # V = [4, 3, 2, 1]: R - V = [-3, -1, 1, 3], Var = 20/3 ; EV = 1 - (20/3)/(5/3) = -3 (worse than a constant)
    assert close(explained_variance(t([[4.0, 3.0, 2.0], [1.0, 0.0, 0.0]]), returns, mask), -3.0)
    # returns that do not vary, or a single valid token: nan
    assert math.isnan(explained_variance(returns, torch.ones(2, 3, dtype=torch.float64), mask))
    assert math.isnan(explained_variance(returns, returns, t([[1, 0, 0], [0, 0, 0]])))


# ------------------------------------------------------------------------------------------------
# padding invariance of every masked loss


@pytest.mark.parametrize("garbage", [NAN, 1e6, -1e6])
def test_losses_invariant_to_appended_padding(garbage):
    gen = torch.Generator().manual_seed(2)
    shape = (3, 5)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])

    def rand(scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    logprobs, old_logprobs, adv, weights = rand(0.2) - 1, rand(0.2) - 1, rand(), rand().abs()
    values, old_values, returns, rewards = rand(), rand(), rand(), rand()
    logits = torch.randn(*shape, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, shape, generator=gen)

    def policy(lp, olp, a, m, w):
        return ppo_policy_loss(lp, olp, a, m, 0.2, is_weights=w)

    def value(v, ov, r, m):
        return value_loss(v, ov, r, m, 0.2)

    def run(n_pad):
        def fill(x):  # fresh leaf tensors every call
            return pad(x, n_pad, garbage) if n_pad else x.clone()

        m = pad_mask(mask, n_pad)
        lp = fill(logprobs).requires_grad_(True)
        v = fill(values).requires_grad_(True)
        # logits at padding must be finite (documented); labels may be anything, e.g. -100
        lg = torch.cat([logits, torch.full((3, n_pad, 4), 1e3 if math.isnan(garbage) else garbage)], dim=1)
        lg.requires_grad_(True)
        lb = torch.cat([labels, torch.full((3, n_pad), -100, dtype=torch.long)], dim=1)
        out = {
            "policy": policy(lp, fill(old_logprobs), fill(adv), m, fill(weights)),
            "value": value(v, fill(old_values), fill(returns), m),
            "lm": lm_loss(lg, lb, m),
        }
        total = sum(loss for loss, _ in out.values())
        total.backward()
        adv_ret = gae(fill(rewards), fill(values), m, 0.9, 0.8)
        whitened = masked_whiten(fill(adv), m)
        return out, lp.grad, v.grad, lg.grad, adv_ret, whitened

    base, padded = run(0), run(2)
    for name in ("policy", "value", "lm"):
        assert close(padded[0][name][0].item(), base[0][name][0].item(), 1e-12), name
        for key, val in base[0][name][1].items():
            assert close(padded[0][name][1][key], val, 1e-12), (name, key)
    for i in (1, 2, 3):  # gradients: same at valid positions, exactly 0 at padding
        assert close(padded[i][:, :5].tolist(), base[i].tolist(), 1e-12)
        assert bool((padded[i][:, 5:] == 0).all())
    for a, b in zip(padded[4], base[4]):
        assert close(a[:, :5].tolist(), b.tolist(), 1e-12)
        assert bool((a[:, 5:] == 0).all())
    assert close(padded[5][:, :5].tolist(), base[5].tolist(), 1e-12)


# ------------------------------------------------------------------------------------------------
# KL controllers


def test_adaptive_kl_controller_update_arithmetic():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    assert ctl.value == 0.1
    # KL 9 > target: e = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2 ; mult = 1 + 0.2 * 512/10000 = 1.01024
    ctl.update(current_kl=9.0, n_steps=512)
    assert close(ctl.value, 0.1 * 1.01024)  # 0.101024
    # KL 5.4 < target: e = 5.4/6 - 1 = -0.1 (inside the clip) ; mult = 1 - 0.1 * 1000/10000 = 0.99
    ctl.update(current_kl=5.4, n_steps=1000)
    assert close(ctl.value, 0.101024 * 0.99)  # 0.10001376
    # KL 0: e = clip(-1, -0.2, 0.2) = -0.2 ; mult = 1 - 0.2 * 5000/10000 = 0.9 ; accepts a 0-d tensor
    ctl.update(current_kl=torch.tensor(0.0), n_steps=5000)
    assert close(ctl.value, 0.10001376 * 0.9)


def test_kl_controller_state_dict_round_trip():
    ctl = AdaptiveKLController(0.2, target=1.0, horizon=100)
    ctl.update(2.0, 10)  # 0.2 * (1 + 0.2 * 10/100) = 0.204
    resumed = AdaptiveKLController(0.05, target=1.0, horizon=100)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    assert close(resumed.value, 0.204)
    for c in (ctl, resumed):
        c.update(0.5, 50)  # e = -0.5 -> -0.2 ; mult = 1 - 0.2 * 0.5 = 0.9
    assert resumed.value == ctl.value
    assert close(resumed.value, 0.204 * 0.9)

    fixed = FixedKLController(0.02)
    fixed.update(100.0, 512)
    assert fixed.value == 0.02
    other = FixedKLController(0.5)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.02


def test_kl_controller_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=1.0, horizon=0)
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-0.1)

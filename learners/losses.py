"""Loss, reward and advantage functions of the three InstructGPT stages, as pure functions over tensors.

- masked reductions: `masked_mean`, `masked_var`, `masked_whiten`;
- KL: `kl_penalty` and the β controllers `FixedKLController`, `AdaptiveKLController`;
- PPO-ptx rewards and advantages: `kl_shaped_rewards` (InstructGPT Eq. 2 per token), `gae`;
- PPO losses: `ppo_policy_loss`, `value_loss`; off-policy correction: `truncated_importance_weights`;
  value diagnostic: `explained_variance`;
- language-model terms (`token_logprobs`, `entropy_from_logits`, `lm_loss`): `raylhf.learners.lm_losses`;
- reward model: `raylhf.learners.ranking_loss.ranking_loss` (InstructGPT Eq. 1), a module of its own.

Conventions shared by every function here:

- Per-token tensors are ``[B, T]`` over response tokens with a 0/1 ``mask`` (bool or float, same
  shape). Valid tokens are normally a prefix of each row (right padding), but nothing here relies on
  it: masked positions are skipped wherever they sit.
- "Mean" means the masked mean over *all valid tokens of the batch* (token-level, not per-sequence),
  so a batch split into minibatches gives the same loss when the minibatch losses are weighted by
  their token counts.
- Values at masked positions never reach the result nor its gradient: inputs are replaced by 0 at
  masked positions (``torch.where``) before any arithmetic, so padding may hold anything, even
  ``nan``/``inf`` or ``-100`` labels. (Exception: logits at masked positions must be finite, since
  ``[B, T, V]`` logits are not copied to be sanitised; a model's logits always are.)
- Functions that return ``(loss, metrics)`` return ``loss`` as a 0-d tensor carrying the graph and
  ``metrics`` as a dict of detached python floats.

References:
    [InstructGPT] Ouyang et al. 2022, "Training language models to follow instructions with human
        feedback", arXiv:2203.02155.
    [PPO] Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
    [GAE] Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
        Estimation", arXiv:1506.02438.
    [Ziegler] Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
        arXiv:1909.08593.
    [KL-approx] Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html.
    [IMPALA] Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with Importance Weighted
        Actor-Learner Architectures", arXiv:1802.01561.
    [baselines] Dhariwal et al. 2017, "OpenAI Baselines", https://github.com/openai/baselines
        (`explained_variance`, the PPO2 value clipping).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


# --------------------------------------------------------------------------------------------------
# masked reductions


def as_bool(mask: Tensor) -> Tensor:
    """A 0/1 mask as bool."""
    return mask if mask.dtype == torch.bool else mask != 0


def check_same_shape(**tensors: Tensor) -> None:
    """ValueError naming each tensor's shape unless they are all the same."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def zero_padding(x: Tensor, valid: Tensor) -> Tensor:
    """`x` where `valid`, 0 elsewhere."""
    # `where`, not `x * mask`: nan * 0 is nan, and the gradient of the discarded branch is exactly 0.
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1.

    Args:
        x: any shape, e.g. ``[B, T]``.
        mask: 0/1, bool or float, same shape as ``x`` (or broadcastable to it).
        dim: reduce over these dims; ``None`` reduces over all elements (a 0-d tensor).

    Returns ``sum(x·m) / max(sum(m), 1)``: a slice with no valid element gives 0, not nan, so fully
    padded rows are harmless under ``dim=1``.
    """
    valid = as_bool(mask).expand_as(x)
    total = zero_padding(x, valid)
    if dim is None:
        return total.sum() / valid.sum().clamp_min(1).to(x.dtype)
    return total.sum(dim=dim) / valid.sum(dim=dim).clamp_min(1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the valid elements of ``x`` (all of them pooled), a 0-d tensor.

    ``var = Σ m·(x - μ)² / n`` with ``μ`` the masked mean and ``n = Σ m``; times ``n / (n - 1)``
    (Bessel) when ``unbiased``. Raises ValueError with fewer than 2 valid elements when unbiased
    (fewer than 1 otherwise).
    """
    valid = as_bool(mask).expand_as(x)
    n = int(valid.sum())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} valid elements, got {n}")
    mean = masked_mean(x, valid)
    var = masked_mean((x - mean) ** 2, valid)
    if unbiased:
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean and unit variance over its valid elements (pooled over the batch).

    ``x̂ = (x - μ) / sqrt(σ² + eps)`` with ``μ``, ``σ²`` the masked mean and unbiased masked variance;
    with ``shift_mean=False`` the mean is added back, ``x̂ = (x - μ) / sqrt(σ² + eps) + μ`` (rescale
    only). Shapes: ``x``, ``mask`` ``[B, T]`` -> ``[B, T]``.

    Padding positions of the result are 0 (whatever ``x`` held there), so whitened advantages can be
    fed to a loss without re-masking and garbage never propagates.
    """
    check_same_shape(x=x, mask=mask)
    valid = as_bool(mask)
    clean = zero_padding(x, valid)
    mean = masked_mean(clean, valid)
    var = masked_var(clean, valid, unbiased=True)
    whitened = (clean - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return zero_padding(whitened, valid)


# --------------------------------------------------------------------------------------------------
# KL penalty and controllers


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π.

    Args:
        logprobs: ``[B, T]`` log π(y_t | x, y_<t) of the sampled tokens.
        ref_logprobs: ``[B, T]`` log π_ref of the same tokens.
        estimator: with ``log_ratio = logprobs - ref_logprobs`` and ``r = π_ref/π = exp(-log_ratio)``
            [KL-approx]:

            - ``"k1"``: ``log_ratio`` — unbiased, can be negative per token; this is the per-token
              penalty ``β·log(π_RL/π_SFT)`` of InstructGPT's objective (Eq. 2) [InstructGPT].
            - ``"k2"``: ``0.5 · log_ratio²`` — biased, low variance, non-negative.
            - ``"k3"``: ``(r - 1) - log r = exp(-log_ratio) - 1 + log_ratio`` — unbiased,
              non-negative, low variance.

    Returns ``[B, T]``; padding positions are not masked (the caller masks).
    """
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")


class FixedKLController:
    """Constant KL coefficient β (InstructGPT uses β = 0.02 [InstructGPT])."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient stays fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive β that steers the measured KL towards ``target`` [Ziegler, Sec. 2.2].

    After each batch::

        e_t  = clip(KL_t / KL_target - 1, -0.2, 0.2)
        β_t+1 = β_t · (1 + e_t · n_steps / horizon)

    where ``n_steps`` is the number of episodes (samples) the batch contained, so a full ``horizon``
    of episodes at a persistent error changes β by at most ≈ e^0.2.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict[str, Any]:
        # target and horizon come from the config; only β evolves.
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


# --------------------------------------------------------------------------------------------------
# per-token rewards


@torch.no_grad()
def kl_shaped_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float, estimator: str = "k1"
) -> tuple[Tensor, Tensor]:
    """Per-token rewards of the PPO-ptx bandit: a KL penalty on every response token, the reward
    model's score on the last one [InstructGPT, Eq. 2; Ziegler, Sec. 2.2].

    Args:
        scores: ``[B]`` reward-model score r_θ(x, y) of each response.
        logprobs: ``[B, T]`` log π_RL of the sampled response tokens.
        ref_logprobs: ``[B, T]`` log π_SFT (the reference policy) of the same tokens.
        mask: ``[B, T]`` 0/1, valid response tokens.
        kl_coef: β.
        estimator: the per-token KL estimator of :func:`kl_penalty` (``"k1"`` is the paper's log-ratio).

    With ``KL_t = kl_penalty(logprobs, ref_logprobs, estimator)_t`` and ``t_b`` the last valid token
    of row b::

        r_t = -β·KL_t + 1[t = t_b]·score_b

    so a row's rewards sum to ``score - β·Σ_t KL_t``, which with k1 is the sampled value of Eq. 2's
    ``r_θ(x, y) - β·log(π_RL(y|x) / π_SFT(y|x))``; spreading the penalty over the tokens gives each
    token its own share of the KL (GAE then credits it).

    ``t_b`` is the last valid position of the row wherever it sits (right padding puts it before the
    trailing masked columns). A row with no valid token has nowhere to put its score: its rewards are
    all 0.

    Returns ``(rewards, kl)``, both ``[B, T]``, 0 at masked positions, detached (constants of the PPO
    losses); ``kl`` is ``KL_t``, for logging and the KL controller.
    """
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must be [B] for logprobs {tuple(logprobs.shape)}")
    valid = as_bool(mask)
    kl = zero_padding(
        kl_penalty(zero_padding(logprobs.detach(), valid), zero_padding(ref_logprobs.detach(), valid), estimator),
        valid,
    )
    valid_from_t = valid.flip(1).cumsum(dim=1).flip(1)  # [B, T] valid tokens at positions >= t
    at_last = valid & (valid_from_t == 1)  # one True per row that has a valid token
    score_at_last = zero_padding(scores.detach()[:, None].expand_as(kl), at_last)
    rewards = -kl_coef * kl + score_at_last
    return rewards, kl


# --------------------------------------------------------------------------------------------------
# advantages


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation [GAE, Eq. 16] over each response, backwards in time.

    Args:
        rewards: ``[B, T]`` per-token rewards (in PPO-ptx: ``-β·KL_t`` on every token plus the RM score
            on the last one [InstructGPT, Eq. 2]).
        values: ``[B, T]`` value estimates V(s_t).
        mask: ``[B, T]`` 0/1, valid response tokens.
        gamma: discount γ in [0, 1].
        lam: GAE λ in [0, 1].

    Computes, over the valid tokens t of a row in order::

        δ_t = r_t + γ·V_{t+1} - V_t
        A_t = δ_t + γλ·A_{t+1}
        R_t = A_t + V_t                  (the λ-return, the value target)

    where ``t+1`` is the next *valid* token of the row (masked positions are skipped, not treated as
    zero-reward steps) and ``V``, ``A`` after the last valid token are 0 (the episode ends there).

    Returns ``(advantages, returns)``, both ``[B, T]``, 0 at masked positions, detached (they are
    targets and constants of the PPO losses). Loops over T (batch-vectorised); T is the response
    length, so the loop is short.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    valid = as_bool(mask)
    rewards = zero_padding(rewards.detach(), valid)
    values = zero_padding(values.detach(), valid)
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(batch)
    next_advantage = rewards.new_zeros(batch)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        valid_t = valid[:, t]
        # A masked step leaves the carried V_{t+1}, A_{t+1} for the previous valid token untouched.
        next_value = torch.where(valid_t, values[:, t], next_value)
        next_advantage = torch.where(valid_t, advantage, next_advantage)
        advantages[:, t] = torch.where(valid_t, advantage, torch.zeros_like(advantage))
    returns = advantages + values
    return advantages, returns


# --------------------------------------------------------------------------------------------------
# PPO losses


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate policy loss [PPO, Eq. 7], optionally importance-weighted per token.

    Args:
        logprobs: ``[B, T]`` log π_θ of the sampled tokens (carries the graph).
        old_logprobs: ``[B, T]`` log π_old (the proximal policy the ratio is clipped around).
        advantages: ``[B, T]``.
        mask: ``[B, T]`` 0/1.
        clip_eps: ε (InstructGPT: 0.2).
        is_weights: optional ``[B, T]`` truncated importance weights ``min(π_old/π_behaviour, c)``
            correcting for stale rollouts; constants (detached here).

    With ``ρ_t = exp(logprobs_t - old_logprobs_t)``::

        ℓ_t  = -min(ρ_t·A_t, clip(ρ_t, 1-ε, 1+ε)·A_t) · w_t
        loss = masked_mean(ℓ)

    Metrics:
        clipfrac: fraction of valid tokens where the clipped term is the one chosen and differs from
            the unclipped one, i.e. where clipping zeroes the token's gradient (``A>0, ρ>1+ε`` or
            ``A<0, ρ<1-ε``). Tokens outside the trust region on the side the objective still pulls
            back (e.g. ``A>0, ρ<1-ε``) are *not* counted; this is smaller than the
            ``|ρ-1| > ε`` fraction some codebases report.
        approx_kl: masked mean of the k3 estimator of KL(π_old ‖ π_θ) under samples from π_old,
            ``(ρ - 1) - log ρ`` [KL-approx].
        ratio_mean, ratio_max: masked mean and max of ρ.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    valid = as_bool(mask)
    logprobs = zero_padding(logprobs, valid)
    old_logprobs = zero_padding(old_logprobs.detach(), valid)
    advantages = zero_padding(advantages.detach(), valid)

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        check_same_shape(logprobs=logprobs, is_weights=is_weights)
        per_token = per_token * zero_padding(is_weights.detach(), valid)
    loss = masked_mean(per_token, valid)

    with torch.no_grad():
        ratio_d = ratio.detach()
        log_ratio_d = log_ratio.detach()
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio_d.dtype), valid).item(),
            "approx_kl": masked_mean(torch.expm1(log_ratio_d) - log_ratio_d, valid).item(),
            "ratio_mean": masked_mean(ratio_d, valid).item(),
            "ratio_max": _masked_max(ratio_d, valid),
        }
    return loss, metrics


def _masked_max(x: Tensor, valid: Tensor) -> float:
    if not bool(valid.any()):
        return float("nan")
    return x[valid].max().item()


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss (the PPO2 value clipping of OpenAI baselines, used with [PPO]).

    Args:
        values: ``[B, T]`` V_φ(s_t) (carries the graph).
        old_values: ``[B, T]`` values at rollout time.
        returns: ``[B, T]`` value targets R_t (from :func:`gae`).
        mask: ``[B, T]`` 0/1.
        clip_eps: ε for the value (in the value's units).

    ::

        V_clip = V_old + clip(V - V_old, -ε, ε)
        loss   = 0.5 · masked_mean(max((V - R)², (V_clip - R)²))

    Metrics: ``vf_clipfrac`` — fraction of valid tokens where the clipped term is strictly larger (so
    it is chosen and the token gets no gradient); ``value_mean`` — masked mean of V.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    valid = as_bool(mask)
    values = zero_padding(values, valid)
    old_values = zero_padding(old_values.detach(), valid)
    returns = zero_padding(returns.detach(), valid)

    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), valid)
    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean((loss_clipped > loss_unclipped).to(values.dtype), valid).item(),
            "value_mean": masked_mean(values.detach(), valid).item(),
        }
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# off-policy correction and value diagnostics


@torch.no_grad()
def truncated_importance_weights(
    old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, c: float
) -> tuple[Tensor, dict[str, float]]:
    """Per-token truncated importance weights ``w_t = min(π_old/π_behaviour, c)`` [IMPALA, Sec. 4.1].

    Args:
        old_logprobs: ``[B, T]`` log π_old, the proximal policy the PPO ratio is clipped around.
        behaviour_logprobs: ``[B, T]`` log π_behaviour, the (older) policy that sampled the tokens.
        mask: ``[B, T]`` 0/1, valid response tokens.
        c: truncation level ρ̄, > 0 (IMPALA uses 1).

    ::

        w_t = min(exp(old_logprobs_t - behaviour_logprobs_t), c)

    Truncation bounds the variance a token the behaviour policy found unlikely would otherwise bring.
    The weights multiply each token's PPO surrogate (``is_weights`` of :func:`ppo_policy_loss`).

    Per token, π_behaviour is whatever distribution sampled that token. The generators record it token by
    token (``Rollout.logprobs``, vLLM's processed logprobs of the step that sampled the token), so a rollout
    whose generation spanned an in-flight weight update (``Rollout.last_version``) carries the new weights'
    probabilities for the tokens sampled after it (attending to a KV cache the old weights wrote) and the
    old ones' before it: ``behaviour_logprobs`` is exact for such mixed rollouts too, and no correction
    by version is needed here.

    Returns ``(weights, metrics)``: ``weights`` ``[B, T]``, 0 at masked positions, detached; metrics
    ``is_weight_mean`` (masked mean of w) and ``is_truncated_frac`` (fraction of valid tokens with
    ``π_old/π_behaviour > c``).
    """
    if c <= 0:
        raise ValueError(f"importance-weight truncation c must be > 0, got {c}")
    check_same_shape(old_logprobs=old_logprobs, behaviour_logprobs=behaviour_logprobs, mask=mask)
    valid = as_bool(mask)
    ratio = torch.exp(zero_padding(old_logprobs.detach(), valid) - zero_padding(behaviour_logprobs.detach(), valid))
    weights = zero_padding(ratio.clamp(max=c), valid)
    metrics = {
        "is_weight_mean": masked_mean(weights, valid).item(),
        "is_truncated_frac": masked_mean((ratio > c).to(ratio.dtype), valid).item(),
    }
    return weights, metrics


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """How much of the returns' variance the value function explains [baselines]::

        EV = 1 - Var[R - V] / Var[R]

    over the valid tokens of ``values``, ``returns``, ``mask`` (all ``[B, T]``), pooled, unbiased
    variances, computed in float64. 1 is a perfect value function, 0 one no better than a constant,
    negative worse than a constant. nan with fewer than 2 valid tokens or returns that do not vary.
    """
    check_same_shape(values=values, returns=returns, mask=mask)
    valid = as_bool(mask)
    if int(valid.sum()) < 2:
        return float("nan")
    r, v = returns[valid].double(), values[valid].double()
    var_r = r.var()
    if float(var_r) == 0.0:
        return float("nan")
    return float(1.0 - (r - v).var() / var_r)

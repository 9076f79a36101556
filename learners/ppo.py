"""The PPO-ptx learner (InstructGPT step 3) for the asynchronous actor/learner setting.

`PPOLearner` holds the policy (initialised from the SFT model), the value model (initialised from the
reward model, as in the paper), one optimiser for each and the KL controller. `train_step` turns a
batch of scored rollouts into PPO updates::

    staleness filter -> collate -> π_old, V_old (current weights) -> per-token rewards -> GAE
        -> truncated importance weights -> ppo_epochs × minibatches (policy + ptx, value) -> KL control

Rewards [InstructGPT, Eq. 2]: ``r_t = -β·KL_t(π_old ‖ π_ref)`` at every response token, plus the RM
score at the last one. The reference logprobs and the RM score come with the rollouts (the reward
service computes them), so neither frozen model runs on the learner's critical path.

Off-policy correction for rollouts sampled by an older policy (the generators run behind the
learner): the learner recomputes ``π_old`` with its current weights when a batch arrives (the proximal
policy of decoupled PPO [Hilton]); the PPO ratio is clipped around it, and each token's surrogate is
multiplied by the truncated importance weight ``min(π_old/π_behaviour, c)`` [IMPALA] computed from
the behaviour logprobs the generator recorded. Rollouts more than ``max_staleness`` versions old are
dropped and counted.

Sequence layout: a rollout is ``prompt_ids + response_ids`` (P + T tokens, right-padded in a batch);
the logits and the value of response token t are read at position ``P - 1 + t``, the state before the
token is emitted. Per-token tensors are ``[B, T]`` over response tokens with a bool mask.

Both models stay in eval mode: dropout would make π_θ differ from π_old at identical weights, so the
PPO ratio would not start at 1.

This module imports torch and transformers only; `raylhf.learners.ppo_actor` wraps it in a Ray actor.

References:
    [InstructGPT] Ouyang et al. 2022, arXiv:2203.02155.
    [PPO] Schulman et al. 2017, arXiv:1707.06347.
    [IMPALA] Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with Importance Weighted
        Actor-Learner Architectures", arXiv:1802.01561 (truncated importance weights).
    [Hilton] Hilton et al. 2021, "Batch size-invariance for policy optimization", arXiv:2110.00641
        (decoupling the proximal policy from the behaviour policy).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from raylhf.contracts.records import Rollout
from raylhf.contracts.snapshot import WeightSnapshot, build_snapshot, named_checkpoint_tensors
from raylhf.learners.losses import (
    AdaptiveKLController,
    FixedKLController,
    KL_ESTIMATORS,
    entropy_from_logits,
    gae,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    token_logprobs,
    value_loss,
)
from raylhf.learners.models import load_causal_lm, load_tokenizer, pick_device
from raylhf.learners.pretrain import causal_lm_loss, sample_windows
from raylhf.learners.reward_model import load_reward_model, per_token_values
from raylhf.learners.training import autocast, use_bf16

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.configs.schema import RunConfig

log = logging.getLogger(__name__)

STATE_FILE = "learner_state.pt"  # optimiser and KL-controller state (torch.load(weights_only=True))
META_FILE = "learner_state.json"  # version, step count, RNG state, settings
_SNAPSHOT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Metrics that measure wall time, not the computation (they differ between identical runs).
TIMING_METRICS = ("step_time_s", "tokens_per_s")


def truncated_importance_weights(old_logprobs: Tensor, behaviour_logprobs: Tensor, c: float) -> Tensor:
    """Per-token ``min(π_old/π_behaviour, c) = min(exp(old_logprobs - behaviour_logprobs), c)`` [IMPALA].

    ``[B, T]`` -> ``[B, T]``, detached (constants of the policy loss). Truncation bounds the variance a
    token the behaviour policy found unlikely would otherwise bring; padding is the caller's to mask.
    """
    if c <= 0:
        raise ValueError(f"importance-weight truncation c must be > 0, got {c}")
    return torch.exp(old_logprobs.detach() - behaviour_logprobs.detach()).clamp(max=c)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over valid tokens: 1 is a perfect value function, 0 a constant one,
    negative worse than a constant. nan when the returns do not vary."""
    valid = mask.bool()
    if int(valid.sum()) < 2:
        return float("nan")
    r, v = returns[valid].double(), values[valid].double()
    var_r = r.var()
    if float(var_r) == 0.0:
        return float("nan")
    return float(1.0 - (r - v).var() / var_r)


@dataclass
class _Batch:
    """Rollouts collated for one train step (or a minibatch of it). L = P + T of the longest row."""

    ids: Tensor  # [B, L] prompt + response, right-padded
    attention_mask: Tensor  # [B, L] 1 on real tokens
    positions: Tensor  # [B, T] index into L of the logits/value that belong to response token t
    response_ids: Tensor  # [B, T] right-padded with a valid token id (masked out)
    mask: Tensor  # [B, T] bool, real response tokens
    behaviour_logprobs: Tensor  # [B, T] float32, from the generator
    ref_logprobs: Tensor  # [B, T] float32, from the reward service
    scores: Tensor  # [B] float32, RM score of each response

    def select(self, rows: Tensor) -> "_Batch":
        """The given rows, with columns trimmed to the longest of them (right padding: trailing columns
        never influence real positions under a causal mask)."""
        seq_len = int(self.attention_mask[rows].sum(dim=1).max())
        resp_len = int(self.mask[rows].sum(dim=1).max())
        return _Batch(
            ids=self.ids[rows, :seq_len],
            attention_mask=self.attention_mask[rows, :seq_len],
            # padding entries pointed past the trimmed width; any in-range index does for them
            positions=self.positions[rows, :resp_len].clamp(max=seq_len - 1),
            response_ids=self.response_ids[rows, :resp_len],
            mask=self.mask[rows, :resp_len],
            behaviour_logprobs=self.behaviour_logprobs[rows, :resp_len],
            ref_logprobs=self.ref_logprobs[rows, :resp_len],
            scores=self.scores[rows],
        )

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]


def collate(rollouts: Sequence[Rollout], pad_id: int, device: torch.device) -> _Batch:
    """Right-padded tensors of a list of rollouts (see the module docstring for the layout)."""
    batch = len(rollouts)
    seq_lens = [len(r.prompt_ids) + len(r.response_ids) for r in rollouts]
    resp_lens = [len(r.response_ids) for r in rollouts]
    width, resp_width = max(seq_lens), max(resp_lens)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    response_ids = torch.full((batch, resp_width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, resp_width), dtype=torch.bool)
    behaviour = torch.zeros((batch, resp_width), dtype=torch.float32)
    ref = torch.zeros((batch, resp_width), dtype=torch.float32)
    # Padding positions point at the last column; they are masked, any in-range index does.
    positions = torch.full((batch, resp_width), width - 1, dtype=torch.long)
    for i, r in enumerate(rollouts):
        p, t = len(r.prompt_ids), len(r.response_ids)
        ids[i, : p + t] = torch.as_tensor(list(r.prompt_ids) + list(r.response_ids), dtype=torch.long)
        attention_mask[i, : p + t] = 1
        response_ids[i, :t] = torch.as_tensor(list(r.response_ids), dtype=torch.long)
        mask[i, :t] = True
        behaviour[i, :t] = torch.as_tensor(r.logprobs, dtype=torch.float32)
        ref[i, :t] = torch.as_tensor(r.ref_logprobs, dtype=torch.float32)
        positions[i, :t] = torch.arange(p - 1, p - 1 + t)
    scores = torch.tensor([float(r.score) for r in rollouts], dtype=torch.float32)
    return _Batch(
        ids=ids.to(device),
        attention_mask=attention_mask.to(device),
        positions=positions.to(device),
        response_ids=response_ids.to(device),
        mask=mask.to(device),
        behaviour_logprobs=behaviour.to(device),
        ref_logprobs=ref.to(device),
        scores=scores.to(device),
    )


def _gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """``x[b, positions[b, t]]`` for ``x`` of shape [B, L] or [B, L, V] -> [B, T] or [B, T, V]."""
    if x.dim() == 2:
        return x.gather(1, positions)
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def validate_rollouts(rollouts: Sequence[Rollout]) -> None:
    """Raise ValueError naming the first malformed rollout. A rollout without a score or reference
    logprobs was not scored: training on it as if its reward were 0 would be silently wrong."""
    for i, r in enumerate(rollouts):
        where = f"rollout {i} (sample_id={r.sample_id!r}, prompt_id={r.prompt_id!r})"
        if r.score is None:
            raise ValueError(f"{where} has no score; the reward service must score every rollout")
        if r.ref_logprobs is None:
            raise ValueError(f"{where} has no ref_logprobs; enable reference logprobs in the reward service")
        if not r.prompt_ids:
            raise ValueError(f"{where} has an empty prompt")
        if not r.response_ids:
            raise ValueError(f"{where} has an empty response")
        t = len(r.response_ids)
        if len(r.logprobs) != t or len(r.ref_logprobs) != t:
            raise ValueError(
                f"{where}: {t} response tokens but {len(r.logprobs)} behaviour logprobs and "
                f"{len(r.ref_logprobs)} reference logprobs"
            )


class PPOLearner:
    """Policy and value model with their optimisers and the KL controller; one `train_step` per batch.

    Args:
        policy_path: SFT checkpoint (HF causal LM, tokenizer alongside); the policy starts from it.
        value_path: reward-model checkpoint (`*ForTokenClassification`, 1 label); the value function
            starts from it.
        lr: policy learning rate (AdamW, no weight decay).
        value_lr: value-model learning rate.
        kl_coef: β, the per-token KL penalty weight (initial value when adaptive).
        kl_estimator: "k1" | "k2" | "k3" (see `raylhf.learners.losses.kl_penalty`).
        adaptive_kl, target_kl, kl_horizon: adapt β towards `target_kl` per sequence [Ziegler].
        gamma, lam: GAE discount and λ (γ = 1: one reward per episode, the bandit).
        clip_eps: PPO ratio clip ε.
        value_clip_eps: value clip, in reward units.
        ppo_epochs: passes over each batch.
        minibatch_size: rollouts per optimiser step.
        grad_clip: max global gradient norm of each model (<= 0: no clipping).
        whiten_advantages: normalise advantages over the batch's valid tokens.
        ptx_coef: γ_ptx of PPO-ptx; 0 is plain PPO and draws no pretraining windows.
        ptx_per_rl: pretraining windows per RL rollout in each minibatch (InstructGPT: 8).
        ptx_seq_len: tokens per pretraining window.
        pretrain_stream: the packed pretraining corpus (`raylhf.learners.pretrain.pack_documents`); needed when
            ``ptx_coef > 0``.
        is_clip_c: truncation c of the importance weights ``min(π_old/π_behaviour, c)``.
        max_staleness: rollouts with ``version - policy_version`` above this are dropped.
        device: "auto" | "cpu" | "cuda" | "cuda:N".
        bf16: bf16 autocast for forward passes (weights and optimiser state stay float32).
        seed: seeds the minibatch order and the pretraining-window sampler.
        torch_threads: torch intra-op threads of this process (None leaves the setting alone).
        snapshot_dtype: dtype of published weights, the generators' dtype ("float32" | "bfloat16" |
            "float16").
        trust_remote_code: let the checkpoints run their own code.
    """

    def __init__(
        self,
        policy_path: str | os.PathLike,
        value_path: str | os.PathLike,
        *,
        lr: float = 1e-5,
        value_lr: float = 1e-5,
        kl_coef: float = 0.02,
        kl_estimator: str = "k1",
        adaptive_kl: bool = False,
        target_kl: float = 6.0,
        kl_horizon: float = 10000,
        gamma: float = 1.0,
        lam: float = 0.95,
        clip_eps: float = 0.2,
        value_clip_eps: float = 0.2,
        ppo_epochs: int = 1,
        minibatch_size: int = 64,
        grad_clip: float = 1.0,
        whiten_advantages: bool = True,
        ptx_coef: float = 0.0,
        ptx_per_rl: int = 8,
        ptx_seq_len: int = 64,
        pretrain_stream: np.ndarray | None = None,
        is_clip_c: float = 2.0,
        max_staleness: int = 4,
        device: str = "auto",
        bf16: bool = False,
        seed: int = 0,
        torch_threads: int | None = None,
        snapshot_dtype: str = "float32",
        trust_remote_code: bool = False,
    ):
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator: expected one of {KL_ESTIMATORS}, got {kl_estimator!r}")
        for name, value in (("lr", lr), ("value_lr", value_lr), ("is_clip_c", is_clip_c), ("clip_eps", clip_eps),
                            ("value_clip_eps", value_clip_eps)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name, value in (("ppo_epochs", ppo_epochs), ("minibatch_size", minibatch_size),
                            ("ptx_per_rl", ptx_per_rl), ("ptx_seq_len", ptx_seq_len)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if ptx_coef < 0:
            raise ValueError(f"ptx_coef must be >= 0, got {ptx_coef}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if snapshot_dtype not in _SNAPSHOT_DTYPES:
            raise ValueError(f"snapshot_dtype: expected one of {sorted(_SNAPSHOT_DTYPES)}, got {snapshot_dtype!r}")
        if ptx_coef > 0:
            if pretrain_stream is None:
                raise ValueError("ptx_coef > 0 needs a pretraining token stream (pretrain_stream)")
            if len(pretrain_stream) <= ptx_seq_len + 1:
                raise ValueError(
                    f"pretraining stream has {len(pretrain_stream)} tokens, fewer than one window of {ptx_seq_len + 1}"
                )
        if torch_threads is not None:
            torch.set_num_threads(int(torch_threads))

        self.lr, self.value_lr = float(lr), float(value_lr)
        self.kl_estimator = kl_estimator
        self.gamma, self.lam = float(gamma), float(lam)
        self.clip_eps, self.value_clip_eps = float(clip_eps), float(value_clip_eps)
        self.ppo_epochs, self.minibatch_size = int(ppo_epochs), int(minibatch_size)
        self.grad_clip = float(grad_clip)
        self.whiten_advantages = bool(whiten_advantages)
        self.ptx_coef, self.ptx_per_rl, self.ptx_seq_len = float(ptx_coef), int(ptx_per_rl), int(ptx_seq_len)
        self.pretrain_stream = pretrain_stream if ptx_coef > 0 else None
        self.is_clip_c = float(is_clip_c)
        self.max_staleness = int(max_staleness)
        self.device = pick_device(device)
        self.bf16 = bool(bf16)
        self.seed = int(seed)
        self.snapshot_dtype = snapshot_dtype
        self.trust_remote_code = trust_remote_code

        self.kl_controller: FixedKLController | AdaptiveKLController = (
            AdaptiveKLController(kl_coef, target_kl, kl_horizon) if adaptive_kl else FixedKLController(kl_coef)
        )
        self.tokenizer = _maybe_load_tokenizer(policy_path, trust_remote_code)
        self._load_models(policy_path, value_path)
        self.pad_id = _pad_id(self.tokenizer, self.policy.config)
        self.rng = np.random.default_rng(self.seed)
        self._version = 0
        self.steps = 0

    # ----------------------------------------------------------------------------------------------
    # setup

    def _load_models(self, policy_path: str | os.PathLike, value_path: str | os.PathLike) -> None:
        # Weights and optimiser state in float32 whatever the checkpoint's dtype; bf16 is autocast only.
        self.policy = load_causal_lm(policy_path, device=str(self.device), trust_remote_code=self.trust_remote_code)
        self.policy.float().eval()
        self.value_model = load_reward_model(value_path, device=str(self.device), trust_remote_code=self.trust_remote_code)
        self.value_model.float().eval()
        self.policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.value_params = [p for p in self.value_model.parameters() if p.requires_grad]
        # eps 1e-5 as in OpenAI's PPO implementations; no weight decay, so a zero gradient moves nothing.
        self.policy_optimizer = torch.optim.AdamW(self.policy_params, lr=self.lr, eps=1e-5, weight_decay=0.0)
        self.value_optimizer = torch.optim.AdamW(self.value_params, lr=self.value_lr, eps=1e-5, weight_decay=0.0)

    @property
    def version(self) -> int:
        """Published weight version; rollouts sampled with version v have staleness ``version - v``."""
        return self._version

    @property
    def kl_coef(self) -> float:
        return self.kl_controller.value

    # ----------------------------------------------------------------------------------------------
    # forward passes

    def _response_logits(self, batch: _Batch) -> Tensor:
        """[B, T, V] policy logits that predict each response token."""
        with autocast(self.device, self.bf16):
            logits = self.policy(input_ids=batch.ids, attention_mask=batch.attention_mask).logits
        return _gather_positions(logits, batch.positions)

    def _response_values(self, batch: _Batch) -> Tensor:
        """[B, T] float32 V(s_t): the value head at the state before each response token."""
        with autocast(self.device, self.bf16):
            values = per_token_values(self.value_model, batch.ids, batch.attention_mask)
        return _gather_positions(values.float(), batch.positions)

    @torch.no_grad()
    def _evaluate(self, batch: _Batch) -> tuple[Tensor, Tensor, Tensor]:
        """π_old logprobs, V_old and entropy, all [B, T], with the current weights, in minibatch-sized chunks."""
        old_logprobs = torch.zeros(batch.mask.shape, dtype=torch.float32, device=self.device)
        old_values = torch.zeros_like(old_logprobs)
        entropy = torch.zeros_like(old_logprobs)
        n = batch.mask.shape[0]
        for start in range(0, n, self.minibatch_size):
            rows = torch.arange(start, min(start + self.minibatch_size, n), device=self.device)
            chunk = batch.select(rows)
            t = chunk.response_len
            logits = self._response_logits(chunk)
            old_logprobs[rows, :t] = token_logprobs(logits, chunk.response_ids).float()
            entropy[rows, :t] = entropy_from_logits(logits).float()
            old_values[rows, :t] = self._response_values(chunk)
        return old_logprobs, old_values, entropy

    @torch.no_grad()
    def logprobs(self, rollouts: Sequence[Rollout]) -> list[list[float]]:
        """Current policy logprobs of each rollout's response tokens (one list of T floats per rollout)."""
        if not rollouts:
            return []
        batch = collate(_as_scored(rollouts), self.pad_id, self.device)
        logprobs, _, _ = self._evaluate(batch)
        return [logprobs[i, : len(r.response_ids)].tolist() for i, r in enumerate(rollouts)]

    # ----------------------------------------------------------------------------------------------
    # the train step

    def train_step(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        """One PPO-ptx update on a batch of scored rollouts. Returns metrics (python floats).

        Raises ValueError for unscored or malformed rollouts and for rollouts from a future version.

        Metrics (means over the rollouts kept, token-level where per token):
            rollouts, dropped_stale, staleness_mean, staleness_max: what was trained on / dropped.
            reward: mean RM score. kl: mean per-sequence Σ_t KL_t(π_old ‖ π_ref) (the configured
            estimator). kl_coef: β used for this batch; kl_coef_next: after the controller update.
            non_score_reward: mean per-sequence Σ_t -β·KL_t. entropy: of π_old.
            advantages_mean (before whitening), returns_mean, value_old_mean, explained_variance (of
            V_old for the returns). is_weight_mean, is_truncated_frac: importance weights and the
            fraction of tokens where exp(old - behaviour) > c.
            policy_loss, value_loss, clipfrac, approx_kl, ratio_mean, vf_clipfrac, value_mean,
            policy_grad_norm, value_grad_norm: token-weighted means over the optimiser steps taken
            (nan if none). ptx_loss (only when ptx_coef > 0): mean pretraining NLL; ptx_windows:
            pretraining windows drawn. optimizer_steps, skipped_steps: minibatch steps taken / skipped
            by the non-finite guard. response_len, tokens_per_s (response tokens per second of this
            call), step_time_s.
        When every rollout is too stale, only rollouts, dropped_stale, kl_coef, skipped_steps and
        step_time_s are returned and nothing is trained.
        """
        t_start = time.perf_counter()
        validate_rollouts(rollouts)
        # -- staleness: drop what is too old to correct for
        staleness = [self._version - r.policy_version for r in rollouts]
        if min(staleness, default=0) < 0:
            raise ValueError(
                f"rollout from policy version {self._version - min(staleness)} but the learner is at {self._version}"
            )
        kept = [r for r, s in zip(rollouts, staleness) if s <= self.max_staleness]
        kept_staleness = [s for s in staleness if s <= self.max_staleness]
        dropped = len(rollouts) - len(kept)
        if not kept:
            log.warning("all %d rollouts were staler than %d versions; nothing to train on", dropped, self.max_staleness)
            return {"rollouts": 0.0, "dropped_stale": float(dropped), "kl_coef": self.kl_coef, "skipped_steps": 0.0,
                    "step_time_s": time.perf_counter() - t_start}

        # -- π_old and V_old with the current weights (the proximal policy)
        batch = collate(kept, self.pad_id, self.device)
        old_logprobs, old_values, entropy = self._evaluate(batch)
        mask = batch.mask

        # -- per-token rewards: -β·KL(π_old ‖ π_ref) everywhere, the RM score at the last token
        beta = self.kl_coef
        kl_tokens = torch.where(mask, kl_penalty(old_logprobs, batch.ref_logprobs, self.kl_estimator), 0.0)
        non_score_rewards = -beta * kl_tokens
        last = mask.sum(dim=1) - 1
        rewards = non_score_rewards.clone()
        rewards[torch.arange(len(kept), device=self.device), last] += batch.scores

        # -- advantages and value targets
        advantages, returns = gae(rewards, old_values, mask, self.gamma, self.lam)
        raw_advantages = advantages
        if self.whiten_advantages and int(mask.sum()) >= 2:
            advantages = masked_whiten(advantages, mask)

        # -- off-policy correction
        is_weights = torch.where(
            mask, truncated_importance_weights(old_logprobs, batch.behaviour_logprobs, self.is_clip_c), 0.0
        )

        # -- optimisation
        opt = self._optimise(batch, old_logprobs, old_values, advantages, returns, is_weights)

        # -- KL control on the measured KL per sequence
        kl_per_seq = kl_tokens.sum(dim=1)
        kl_mean = float(kl_per_seq.mean())
        if math.isfinite(kl_mean):
            self.kl_controller.update(kl_mean, n_steps=len(kept))
        else:
            log.warning("non-finite KL to the reference policy; KL controller not updated")
        self.steps += 1

        step_time = time.perf_counter() - t_start
        response_tokens = int(mask.sum())
        truncated = (old_logprobs - batch.behaviour_logprobs).exp() > self.is_clip_c
        return {
            "rollouts": float(len(kept)),
            "reward": float(batch.scores.mean()),
            "kl": kl_mean,
            "kl_coef": beta,
            "kl_coef_next": self.kl_coef,
            "non_score_reward": float(non_score_rewards.sum(dim=1).mean()),
            "entropy": float(masked_mean(entropy, mask)),
            "advantages_mean": float(masked_mean(raw_advantages, mask)),
            "returns_mean": float(masked_mean(returns, mask)),
            "value_old_mean": float(masked_mean(old_values, mask)),
            "explained_variance": explained_variance(old_values, returns, mask),
            "staleness_mean": float(np.mean(kept_staleness)),
            "staleness_max": float(max(kept_staleness)),
            "dropped_stale": float(dropped),
            "is_weight_mean": float(masked_mean(is_weights, mask)),
            "is_truncated_frac": float(masked_mean(truncated.float(), mask)),
            "response_len": response_tokens / len(kept),
            "tokens_per_s": response_tokens / step_time,
            "step_time_s": step_time,
            **opt,
        }

    def _optimise(
        self, batch: _Batch, old_logprobs: Tensor, old_values: Tensor, advantages: Tensor, returns: Tensor,
        is_weights: Tensor,
    ) -> dict[str, float]:
        """`ppo_epochs` passes of shuffled minibatches; metrics are token-weighted means over the steps taken."""
        n = batch.mask.shape[0]
        sums: dict[str, float] = {}
        tokens_done = 0.0
        steps_done = skipped = ptx_windows = 0
        ptx_sum = 0.0
        for _ in range(self.ppo_epochs):
            order = torch.from_numpy(self.rng.permutation(n)).to(self.device)
            for start in range(0, n, self.minibatch_size):
                rows = order[start : start + self.minibatch_size]
                mb = batch.select(rows)
                t = mb.response_len
                logits = self._response_logits(mb)
                logprobs = token_logprobs(logits, mb.response_ids)
                pg_loss, pg_metrics = ppo_policy_loss(
                    logprobs, old_logprobs[rows, :t], advantages[rows, :t], mb.mask, self.clip_eps,
                    is_weights=is_weights[rows, :t],
                )
                values = self._response_values(mb)
                vf_loss, vf_metrics = value_loss(values, old_values[rows, :t], returns[rows, :t], mb.mask,
                                                 self.value_clip_eps)
                policy_objective = pg_loss
                ptx_loss = None
                if self.ptx_coef > 0:
                    windows = sample_windows(self.pretrain_stream, self.ptx_per_rl * len(rows), self.ptx_seq_len, self.rng)
                    ptx_windows += windows.shape[0]
                    with autocast(self.device, self.bf16):
                        ptx_loss, _ = causal_lm_loss(self.policy, windows.to(self.device))
                    policy_objective = policy_objective + self.ptx_coef * ptx_loss
                grad_norms = self._guarded_step(policy_objective, vf_loss)
                if grad_norms is None:
                    skipped += 1
                    continue
                tokens = float(mb.mask.sum())
                tokens_done += tokens
                steps_done += 1
                step_metrics = {
                    "policy_loss": pg_loss.item(),
                    "value_loss": vf_loss.item(),
                    "clipfrac": pg_metrics["clipfrac"],
                    "approx_kl": pg_metrics["approx_kl"],
                    "ratio_mean": pg_metrics["ratio_mean"],
                    "vf_clipfrac": vf_metrics["vf_clipfrac"],
                    "value_mean": vf_metrics["value_mean"],
                    **grad_norms,
                }
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * tokens
                if ptx_loss is not None:
                    ptx_sum += ptx_loss.item()
        keys = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "ratio_mean", "vf_clipfrac", "value_mean",
                "policy_grad_norm", "value_grad_norm")
        out = {key: (sums[key] / tokens_done if tokens_done else float("nan")) for key in keys}
        if self.ptx_coef > 0:
            out["ptx_loss"] = ptx_sum / steps_done if steps_done else float("nan")
        out["ptx_windows"] = float(ptx_windows)
        out["optimizer_steps"] = float(steps_done)
        out["skipped_steps"] = float(skipped)
        return out

    def _guarded_step(self, policy_objective: Tensor, vf_loss: Tensor) -> dict[str, float] | None:
        """Backward, clip and step both models, or neither: a non-finite loss or gradient in either skips
        the minibatch and leaves weights and optimiser state untouched. Returns the gradient norms, or
        None when skipped."""
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        if not (torch.isfinite(policy_objective) and torch.isfinite(vf_loss)):
            log.warning("skipping a PPO minibatch: non-finite loss (policy %s, value %s)",
                        policy_objective.item(), vf_loss.item())
            return None
        # The two models share no parameters: one backward through the sum gives each its own gradient.
        (policy_objective + vf_loss).backward()
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        policy_norm = torch.nn.utils.clip_grad_norm_(self.policy_params, max_norm)
        value_norm = torch.nn.utils.clip_grad_norm_(self.value_params, max_norm)
        if not (torch.isfinite(policy_norm) and torch.isfinite(value_norm)):
            self.policy_optimizer.zero_grad(set_to_none=True)
            self.value_optimizer.zero_grad(set_to_none=True)
            log.warning("skipping a PPO minibatch: non-finite gradient (policy norm %s, value norm %s)",
                        float(policy_norm), float(value_norm))
            return None
        self.policy_optimizer.step()
        self.value_optimizer.step()
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        return {"policy_grad_norm": float(policy_norm), "value_grad_norm": float(value_norm)}

    # ----------------------------------------------------------------------------------------------
    # weights out

    def publish(self) -> tuple[int, WeightSnapshot]:
        """Advance the version and pack the policy weights for the generators.

        Names are the HF checkpoint's (what vLLM's `load_weights` maps); a tied embedding is carried
        once, under `model.embed_tokens.weight`, as `save_pretrained` writes it. Weights are cast to
        `snapshot_dtype`.
        """
        self._version += 1
        dtype = _SNAPSHOT_DTYPES[self.snapshot_dtype]
        with torch.no_grad():
            tensors = ((name, t.to(dtype) if t.is_floating_point() else t) for name, t in named_checkpoint_tensors(self.policy))
            snapshot = build_snapshot(tensors, self._version)
        return self._version, snapshot

    # ----------------------------------------------------------------------------------------------
    # checkpoints

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write `path/policy` (HF model + tokenizer), `path/value` (HF model), and the learner state:
        optimisers and KL controller in `learner_state.pt` (tensors and plain values only, loadable
        with ``weights_only=True``), version, step count and RNG state in `learner_state.json`."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(out / "policy")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out / "policy")
        self.value_model.save_pretrained(out / "value")
        torch.save(
            {
                "policy_optimizer": self.policy_optimizer.state_dict(),
                "value_optimizer": self.value_optimizer.state_dict(),
                "kl_controller": self.kl_controller.state_dict(),
            },
            out / STATE_FILE,
        )
        meta = {
            "version": self._version,
            "steps": self.steps,
            "rng": self.rng.bit_generator.state,
            "kl_controller": type(self.kl_controller).__name__,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=1))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a `save_checkpoint` directory: weights, optimiser, KL-controller, version and RNG
        state. Hyperparameters stay this learner's own (pass the same ones to resume exactly)."""
        src = Path(path)
        for required in ("policy", "value", STATE_FILE, META_FILE):
            if not (src / required).exists():
                raise FileNotFoundError(f"{src}: not a PPO learner checkpoint (missing {required})")
        meta = json.loads((src / META_FILE).read_text())
        if meta["kl_controller"] != type(self.kl_controller).__name__:
            raise ValueError(
                f"{src}: saved with a {meta['kl_controller']}, this learner uses a {type(self.kl_controller).__name__}"
            )
        state = torch.load(src / STATE_FILE, map_location=self.device, weights_only=True)
        self._load_models(src / "policy", src / "value")
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self._version = int(meta["version"])
        self.steps = int(meta["steps"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = meta["rng"]

    def describe(self) -> dict[str, Any]:
        """Sizes and settings, for logs."""
        return {
            "version": self._version,
            "steps": self.steps,
            "device": str(self.device),
            "bf16": self.bf16,
            "policy_parameters": sum(p.numel() for p in self.policy_params),
            "value_parameters": sum(p.numel() for p in self.value_params),
            "kl_coef": self.kl_coef,
            "ptx": self.ptx_coef > 0,
        }


def _as_scored(rollouts: Sequence[Rollout]) -> list[Rollout]:
    """Rollouts with placeholder score/ref_logprobs, for forward passes that use neither."""
    return [
        r if r.score is not None and r.ref_logprobs is not None
        else dataclasses.replace(r, score=0.0, ref_logprobs=[0.0] * len(r.response_ids))
        for r in rollouts
    ]


def _maybe_load_tokenizer(path: str | os.PathLike, trust_remote_code: bool):
    if not (Path(path) / "tokenizer_config.json").exists():
        return None
    return load_tokenizer(path, trust_remote_code=trust_remote_code)


def _pad_id(tokenizer, config) -> int:
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(config, "pad_token_id", None),
                      getattr(config, "eos_token_id", None)):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0  # padding is masked everywhere; any valid id does


def learner_settings(
    run: "RunConfig",
    policy_path: str | os.PathLike,
    value_path: str | os.PathLike,
    pretrain_stream: np.ndarray | None = None,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """`PPOLearner` arguments from a `RunConfig` (its `ppo` section, seed, device, precision, and the
    generators' dtype for published snapshots)."""
    cfg = run.ppo
    return dict(
        policy_path=str(policy_path),
        value_path=str(value_path),
        lr=cfg.lr,
        value_lr=cfg.value_lr,
        kl_coef=cfg.kl_coef,
        kl_estimator=cfg.kl_estimator,
        adaptive_kl=cfg.adaptive_kl,
        target_kl=cfg.target_kl,
        kl_horizon=cfg.kl_horizon,
        gamma=cfg.gamma,
        lam=cfg.lam,
        clip_eps=cfg.clip_eps,
        value_clip_eps=cfg.value_clip_eps,
        ppo_epochs=cfg.ppo_epochs,
        minibatch_size=cfg.minibatch_size,
        grad_clip=cfg.grad_clip,
        whiten_advantages=cfg.whiten_advantages,
        ptx_coef=cfg.ptx_coef,
        ptx_per_rl=cfg.ptx_per_rl,
        ptx_seq_len=cfg.ptx_seq_len,
        pretrain_stream=pretrain_stream if cfg.ptx_coef > 0 else None,
        is_clip_c=cfg.is_clip_c,
        max_staleness=cfg.max_staleness,
        device=run.device,
        bf16=use_bf16(run.train_precision, pick_device(run.device)),
        seed=run.seed,
        torch_threads=torch_threads,
        snapshot_dtype=run.generation.dtype,
        trust_remote_code=run.trust_remote_code,
    )

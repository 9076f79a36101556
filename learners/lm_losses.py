"""Language-model terms as pure functions over tensors: per-token log-probabilities and entropies (the PPO
learner, the reference scorer) and the masked next-token loss (pretraining, SFT and PPO-ptx's pretraining term).
The conventions of `raylhf.learners.losses` hold here too."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from raylhf.learners.losses import as_bool, check_same_shape, masked_mean


def _upcast(logits: Tensor) -> Tensor:
    # 16-bit log-probs carry ~2-3 significant digits; PPO ratios exp(Δlogp) need more.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """``log softmax(logits)[labels]`` per position.

    Args:
        logits: ``[B, T, V]``, already aligned with ``labels`` (position t predicts ``labels[:, t]``;
            the caller does the causal shift).
        labels: ``[B, T]`` token ids in ``[0, V)``.

    Returns ``[B, T]`` in the logits' dtype (float32 for 16-bit logits). Memory: ``log_softmax``
    allocates one more ``[B, T, V]`` tensor (kept for backward) before the gather; callers with a
    large vocabulary bound peak memory by calling this on chunks of the batch.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not align with labels {tuple(labels.shape)}")
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    return torch.gather(logp, dim=-1, index=labels.long().unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position, ``H = logsumexp(z) - Σ softmax(z)·z``.

    ``[B, T, V]`` -> ``[B, T]`` (float32 for 16-bit logits).
    """
    logits = _upcast(logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def lm_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Token-level negative log-likelihood: the SFT loss on response tokens and the pretraining term
    ``γ·E_pretrain[log π_RL(x)]`` of PPO-ptx [InstructGPT, Eq. 2] (the caller applies γ).

    Args:
        logits: ``[B, T, V]`` aligned with ``labels`` (caller shifts).
        labels: ``[B, T]``; any value (e.g. -100) at masked positions.
        mask: ``[B, T]`` 0/1, tokens that count. Logits at masked positions must be finite (a nan
            there would reach the gradient through ``log_softmax``).

    ``loss = masked_mean(-log p(labels_t))``. Metrics: ``nll`` (= loss), ``ppl = exp(nll)``,
    ``tokens`` (number of valid tokens, as a float).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not align with labels {tuple(labels.shape)}")
    check_same_shape(labels=labels, mask=mask)
    valid = as_bool(mask)
    safe_labels = torch.where(valid, labels.long(), torch.zeros((), dtype=torch.long, device=labels.device))
    nll = -token_logprobs(logits, safe_labels)
    loss = masked_mean(nll, valid)
    value = loss.detach().item()
    metrics = {
        "nll": value,
        "ppl": math.exp(value) if value < 700.0 else math.inf,
        "tokens": float(valid.sum().item()),
    }
    return loss, metrics

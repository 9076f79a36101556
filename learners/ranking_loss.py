"""The reward model's K-wise ranking loss [InstructGPT, Eq. 1] as a pure function over tensors, with a
labeler's ties left out.

References:
    [InstructGPT] Ouyang et al. 2022, "Training language models to follow instructions with human
        feedback", arXiv:2203.02155.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raylhf.learners.losses import zero_padding


def ranking_loss(scores: Tensor, order: Tensor, tied: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """K-wise pairwise ranking loss of the reward model [InstructGPT, Eq. 1], with ties.

    Args:
        scores: ``[P, K]`` scalar reward r(x_p, y_{p,k}) of each of a prompt's responses (any value at
            responses that are not ranked).
        order: ``[P, K]`` long, response indices best -> worst; rows of a prompt with ``K_p < K``
            responses end in ``-1`` padding (padding only at the end of a row, no repeated index).
        tied: ``[P, K-1]`` bool or None; ``tied[p, i]``: the responses at positions i and i+1 of
            ``order[p]`` are equally good (a labeler's tie). Ties chain: positions i < j are tied when
            ``tied[p, i..j-1]`` are all True. Entries past a prompt's ``K_p - 1`` are ignored (False padding).

    ::

        loss = 1/P · Σ_p  1/N_p · Σ_{(w, l): w ranked above l, not tied}  -log σ(r_w - r_l)

    where N_p is prompt p's number of untied pairs (C(K_p, 2) without ties): every prompt's comparisons
    form one batch element with equal weight, as in the paper (which does so to avoid overfitting to
    prompts seen K-1 times per epoch). A tied pair says neither response is better, so it is no term of
    the loss and no term of the metrics. Vectorised: ranks and tie groups are scattered from ``order`` and
    a ``[P, K, K]`` mask selects the pairs.

    Metrics (pooled over the untied pairs of the batch): ``accuracy`` — fraction with r_w > r_l;
    ``pairs`` — number of pairs; ``margin`` — mean of r_w - r_l.

    Raises ValueError for a malformed ``order`` or ``tied``, a prompt with fewer than 2 ranked responses,
    or one whose every pair is tied (nothing to learn from it).
    """
    if scores.dim() != 2 or scores.shape != order.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and order {tuple(order.shape)} must both be [P, K]")
    if order.dtype.is_floating_point or order.dtype == torch.bool:
        raise ValueError(f"order must be an integer tensor, got {order.dtype}")
    num_prompts, k = order.shape
    if num_prompts == 0:
        raise ValueError("ranking_loss needs at least one prompt")
    if tied is not None and (tied.dtype != torch.bool or tuple(tied.shape) != (num_prompts, k - 1)):
        raise ValueError(f"tied must be a bool tensor [P, K-1] = [{num_prompts}, {k - 1}], got {tied.dtype} "
                         f"{tuple(tied.shape)}")
    listed = order >= 0
    if bool((order < -1).any()) or bool((order >= k).any()):
        raise ValueError(f"order entries must be response indices in [0, {k}) or -1 padding")
    if bool((listed[:, 1:] & ~listed[:, :-1]).any()):
        raise ValueError("order has -1 padding before a response index; padding must be at the end of a row")
    ranked_count = listed.sum(dim=1)
    if bool((ranked_count < 2).any()):
        bad = torch.nonzero(ranked_count < 2).flatten().tolist()
        raise ValueError(f"prompts {bad} have fewer than 2 ranked responses")

    # Padding entries scatter into a spare column K that is dropped afterwards.
    index = torch.where(listed, order.long(), torch.full_like(order, k, dtype=torch.long))
    counts = torch.zeros(num_prompts, k + 1, dtype=torch.long, device=order.device)
    counts.scatter_add_(1, index, torch.ones_like(index))
    if bool((counts[:, :k] > 1).any()):
        raise ValueError("order repeats a response index within a prompt")
    positions = torch.arange(k, device=order.device).expand(num_prompts, k)
    ranks = torch.full((num_prompts, k + 1), k, dtype=torch.long, device=order.device)
    ranks.scatter_(1, index, positions)
    ranks = ranks[:, :k]  # ranks[p, i] = position of response i in the ranking; k if unranked
    is_ranked = ranks < k

    # pair_mask[p, w, l]: response w is ranked above response l.
    pair_mask = is_ranked[:, :, None] & is_ranked[:, None, :] & (ranks[:, :, None] < ranks[:, None, :])
    if tied is not None:
        # Tie groups: position i starts a new group unless it is tied to position i-1, so group[p, i] counts
        # the untied steps before i; two positions are tied exactly when they share a group.
        # (Steps into padding are dropped: no pair involves a padding position.)
        steps = (~tied.to(order.device)) & listed[:, 1:]
        group = torch.cat([torch.zeros(num_prompts, 1, dtype=torch.long, device=order.device),
                           steps.long().cumsum(dim=1)], dim=1)  # [P, K] by position
        response_group = group.gather(1, ranks.clamp(max=k - 1))  # [P, K] by response (unranked: any value)
        pair_mask = pair_mask & (response_group[:, :, None] != response_group[:, None, :])
    pairs_per_prompt = pair_mask.sum(dim=(1, 2))  # N_p
    if bool((pairs_per_prompt == 0).any()):
        bad = torch.nonzero(pairs_per_prompt == 0).flatten().tolist()
        raise ValueError(f"prompts {bad} have every pair tied: no pair to train on")
    scores = zero_padding(scores, is_ranked)
    diff = scores[:, :, None] - scores[:, None, :]  # r_w - r_l
    pair_losses = zero_padding(-F.logsigmoid(diff), pair_mask)
    loss = (pair_losses.sum(dim=(1, 2)) / pairs_per_prompt.to(scores.dtype)).mean()

    with torch.no_grad():
        chosen = diff.detach()[pair_mask]
        metrics = {
            "accuracy": (chosen > 0).to(scores.dtype).mean().item(),
            "pairs": float(chosen.numel()),
            "margin": chosen.mean().item(),
        }
    return loss, metrics

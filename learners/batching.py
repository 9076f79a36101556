"""Turning token-id sequences into padded tensors (right padding) for the trainers and the reward model:
`pad_right`, `prompt_response_batch`, `last_token_index`, and `pack_microbatches` (which sequences share a
forward pass). PPO rollouts are collated in `raylhf.learners.rollout_batch`."""

from __future__ import annotations

from typing import Sequence

import torch


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids` [B, T] right-padded with `pad_id`, and `attention_mask` [B, T] (1 on real tokens)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def prompt_response_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate (prompt_ids, response_ids) pairs.

    Returns `ids` [B, T], `attention_mask` [B, T] and `response_mask` [B, T], where
    response_mask[b, t] = 1 when token t of row b is a response token.
    """
    ids, attention_mask = pad_right([list(p) + list(r) for p, r in pairs], pad_id)
    response_mask = torch.zeros_like(attention_mask)
    for i, (p, r) in enumerate(pairs):
        response_mask[i, len(p) : len(p) + len(r)] = 1
    return ids, attention_mask, response_mask


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of the last real token of each right-padded row."""
    return attention_mask.sum(dim=1) - 1


def pack_microbatches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices into `lengths` grouped for separate forward passes, longest first, each group with
    ``rows x its longest <= max_tokens`` padded tokens (a sequence longer than `max_tokens` goes alone).
    Sequences of similar length share a pass, so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups

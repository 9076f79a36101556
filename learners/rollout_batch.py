"""Scored rollouts as the padded tensors of one PPO batch.

- `validate_rollouts` rejects unscored or malformed rollouts; `as_scored` fills placeholders for
  forward passes that read neither score nor reference logprobs.
- `filter_stale` drops rollouts sampled too many policy versions ago.
- `collate` pads a list of rollouts into a `RolloutBatch`; `RolloutBatch.minibatches` plans an epoch's
  minibatches (each cut into micro-batches of similar length), `RolloutBatch.select` takes one of them;
  `gather_positions` reads per-position model outputs at the response tokens.

Layout: a rollout is ``prompt_ids + response_ids`` (P + T tokens, right-padded in a batch); the
logits and the value of response token t are read at position ``P - 1 + t``, the state before the
token is emitted. Per-token tensors are ``[B, T]`` over response tokens with a bool mask.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from raylhf.contracts.records import Rollout
from raylhf.learners.batching import pack_microbatches


@dataclass
class RolloutBatch:
    """Rollouts collated for one train step (or a minibatch of it). L = P + T of the longest row."""

    ids: Tensor  # [B, L] prompt + response, right-padded
    attention_mask: Tensor  # [B, L] 1 on real tokens
    positions: Tensor  # [B, T] index into L of the logits/value that belong to response token t
    response_ids: Tensor  # [B, T] right-padded with a valid token id (masked out)
    mask: Tensor  # [B, T] bool, real response tokens
    behaviour_logprobs: Tensor  # [B, T] float32, from the generator
    ref_logprobs: Tensor  # [B, T] float32, from the reward service
    scores: Tensor  # [B] float32, RM score of each response

    def select(self, rows: Tensor) -> "RolloutBatch":
        """The given rows, with columns trimmed to the longest of them (right padding: trailing columns
        never influence real positions under a causal mask)."""
        seq_len = int(self.attention_mask[rows].sum(dim=1).max())
        resp_len = int(self.mask[rows].sum(dim=1).max())
        return RolloutBatch(
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

    def microbatches(self, rows: Tensor, max_tokens: int) -> list[Tensor]:
        """`rows` cut into groups for separate forward passes by `pack_microbatches` on their lengths (prompt +
        response): longest first, at most `max_tokens` padded tokens each. ``max_tokens`` 0: one group."""
        if max_tokens <= 0:
            return [rows]
        groups = pack_microbatches(self.attention_mask[rows].sum(dim=1).tolist(), max_tokens)
        return [rows[torch.tensor(g, dtype=torch.long, device=rows.device)] for g in groups]

    def minibatches(self, order: Tensor, size: int, max_tokens: int) -> list[list[Tensor]]:
        """Minibatches of `size` rows taken in `order`, each cut into micro-batches (`microbatches`)."""
        return [self.microbatches(order[start : start + size], max_tokens) for start in range(0, len(order), size)]


def collate(rollouts: Sequence[Rollout], pad_id: int, device: torch.device) -> RolloutBatch:
    """Right-padded tensors of a list of scored rollouts (see the module docstring for the layout)."""
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
    return RolloutBatch(
        ids=ids.to(device),
        attention_mask=attention_mask.to(device),
        positions=positions.to(device),
        response_ids=response_ids.to(device),
        mask=mask.to(device),
        behaviour_logprobs=behaviour.to(device),
        ref_logprobs=ref.to(device),
        scores=scores.to(device),
    )


def gather_positions(x: Tensor, positions: Tensor) -> Tensor:
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


def as_scored(rollouts: Sequence[Rollout]) -> list[Rollout]:
    """Rollouts with placeholder score/ref_logprobs, for forward passes that use neither."""
    return [
        r if r.score is not None and r.ref_logprobs is not None
        else dataclasses.replace(r, score=0.0, ref_logprobs=[0.0] * len(r.response_ids))
        for r in rollouts
    ]


def filter_stale(
    rollouts: Sequence[Rollout], version: int, max_staleness: int
) -> tuple[list[Rollout], list[int], int]:
    """Keep rollouts with ``staleness = version - policy_version <= max_staleness``.

    Returns ``(kept, kept_staleness, dropped)``: the kept rollouts in order, the staleness of each,
    and how many were dropped. Raises ValueError for a rollout from a version after ``version``.
    """
    staleness = [version - r.policy_version for r in rollouts]
    if min(staleness, default=0) < 0:
        raise ValueError(f"rollout from policy version {version - min(staleness)} but the learner is at {version}")
    kept = [r for r, s in zip(rollouts, staleness) if s <= max_staleness]
    kept_staleness = [s for s in staleness if s <= max_staleness]
    return kept, kept_staleness, len(rollouts) - len(kept)

"""`PolicyValue`: the two networks PPO trains, how they are run on a batch and how one minibatch updates them.

The policy π_θ starts from the SFT checkpoint, the value model V from the reward model (InstructGPT).
Both are read at the response tokens of a `RolloutBatch` (`raylhf.learners.rollout_batch`): the logits
and the value of response token t at position ``P - 1 + t``, the state before the token is emitted.
`PolicyValue.evaluate` gives π_old, V_old and the entropy of a batch; `PolicyValue.minibatch_step` takes
one guarded optimiser step of both models on a minibatch (clipped surrogate with importance weights plus
the pretraining term for the policy, clipped value loss for the value model). What a train step is, in
which order these run and over which minibatches, is `raylhf.learners.ppo.PPOLearner`'s.

Both models stay in eval mode: dropout would make π_θ differ from π_old at identical weights, so the PPO
ratio would not start at 1. Both train in float32 whatever their checkpoints' dtype; `PolicyValue.save` writes
them back in the dtype each was loaded in (`save_pretrained_as`), and `master_weights` holds the float32 values
that rounding would lose, for an exact resume.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from raylhf.contracts.snapshot import named_checkpoint_tensors
from raylhf.contracts.timing import PhaseTimer
from raylhf.learners.lm_losses import entropy_from_logits, token_logprobs
from raylhf.learners.losses import ppo_policy_loss, value_loss
from raylhf.learners.models import load_causal_lm, save_pretrained_as
from raylhf.learners.pretrain import causal_lm_loss
from raylhf.learners.reward_model import load_reward_model, per_token_values
from raylhf.learners.rollout_batch import RolloutBatch, gather_positions
from raylhf.learners.training import autocast

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.configs.schema import PPOConfig

log = logging.getLogger(__name__)


def response_head_split(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, output layer) of a causal LM whose logits are exactly ``head(decoder(ids).last_hidden_state)``,
    else None. Checked numerically on a few tokens rather than trusted by class: some models scale or cap
    their logits after the output layer (Gemma 2's soft-capping, Cohere's logit scale), and for those the
    split would compute something else."""
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None:
        return None
    device = next(model.parameters()).device
    ids = torch.arange(1, 5, device=device).unsqueeze(0) % model.config.vocab_size
    with torch.no_grad():
        try:
            split = head(decoder(input_ids=ids).last_hidden_state)
        except (TypeError, AttributeError):
            return None
        whole = model(input_ids=ids).logits
    if split.shape != whole.shape or not torch.allclose(split, whole, rtol=1e-4, atol=1e-5):
        return None
    return decoder, head


@dataclass
class Forward:
    """A micro-batch's forward passes at the current weights, graph kept for its optimiser step."""

    batch: RolloutBatch
    logprobs: Tensor  # [B, T] log π_θ(response token), autograd graph to the policy
    values: Tensor  # [B, T] V(s_t), autograd graph to the value model


class PolicyValue:
    """Policy and value model, each with its AdamW optimiser, in float32 (bf16 is autocast only).

    Args:
        cfg: the `ppo` section (learning rates, attention kernel, clips, ptx coefficient, gradient clip).
        policy_path: SFT checkpoint (HF causal LM).
        value_path: reward-model checkpoint (`*ForTokenClassification`, 1 label).
        device: where both models live.
        bf16: bf16 autocast for forward passes.
        trust_remote_code: let the checkpoints run their own code.
        timer: the phase timer `minibatch_step` adds its phases to (`raylhf.learners.ppo.PHASES`).
        split_output_layer: run the policy's output layer on the response positions only, where the model
            allows it (`response_head_split`); False runs it on every position, as the model's own forward.
        fused_optimizer: AdamW's fused kernel; False: its default (foreach) implementation.
    """

    def __init__(self, cfg: PPOConfig, policy_path: str | os.PathLike, value_path: str | os.PathLike, *,
                 device: torch.device, bf16: bool, trust_remote_code: bool, timer: PhaseTimer,
                 split_output_layer: bool = True, fused_optimizer: bool = True):
        self.cfg = cfg
        self.device = device
        self.bf16 = bf16
        self.timer = timer
        self.policy = load_causal_lm(policy_path, device=device, trust_remote_code=trust_remote_code)
        self.value_model = load_reward_model(value_path, device=device, trust_remote_code=trust_remote_code)
        # Loaded in their checkpoints' dtypes, which `save` writes them back in (a bf16 input gives a bf16 output).
        self.policy_dtype: torch.dtype = self.policy.dtype
        self.value_dtype: torch.dtype = self.value_model.dtype
        self.policy.float().eval()
        self.value_model.float().eval()
        attention = cfg.attention
        if attention == "auto":
            attention = "eager" if device.type == "cpu" else "sdpa"
        for model in (self.policy, self.value_model):
            model.set_attn_implementation(attention)
        self.decoder_and_head = response_head_split(self.policy) if split_output_layer else None
        self.policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.value_params = [p for p in self.value_model.parameters() if p.requires_grad]
        # eps 1e-5 as in OpenAI's PPO implementations; no weight decay, so a zero gradient moves nothing.
        # The fused kernel updates every parameter in one pass (one call per model instead of several per tensor).
        fused = {"fused": True} if fused_optimizer else {}
        self.policy_optimizer = torch.optim.AdamW(self.policy_params, lr=cfg.lr, eps=1e-5, weight_decay=0.0, **fused)
        self.value_optimizer = torch.optim.AdamW(self.value_params, lr=cfg.value_lr, eps=1e-5, weight_decay=0.0,
                                                 **fused)

    # ----------------------------------------------------------------------------------------------
    # weights out

    def _models(self) -> tuple[tuple[str, torch.nn.Module, torch.dtype], ...]:
        return ("policy", self.policy, self.policy_dtype), ("value", self.value_model, self.value_dtype)

    def save(self, policy_dir: str | os.PathLike, value_dir: str | os.PathLike) -> None:
        """Both models as HF checkpoints, each in the dtype its checkpoint had."""
        save_pretrained_as(self.policy, policy_dir, self.policy_dtype)
        save_pretrained_as(self.value_model, value_dir, self.value_dtype)

    def master_weights(self) -> dict[str, Tensor]:
        """The float32 tensors of each model that `save` rounds to a narrower dtype, as `policy.<name>` /
        `value.<name>` (empty when both are saved in float32, and the checkpoints are exact)."""
        return {f"{prefix}.{name}": t.detach().cpu().contiguous()
                for prefix, model, dtype in self._models() if dtype != torch.float32
                for name, t in named_checkpoint_tensors(model)}

    @torch.no_grad()
    def load_master_weights(self, tensors: dict[str, Tensor]) -> None:
        """Put back what `master_weights` returned (the models were loaded from the rounded checkpoints)."""
        for prefix, model, dtype in self._models():
            if dtype == torch.float32:
                continue
            named = list(named_checkpoint_tensors(model))
            missing = [name for name, _ in named if f"{prefix}.{name}" not in tensors]
            if missing:
                raise ValueError(f"float32 master weights of the {prefix} lack {missing[:3]}")
            for name, t in named:
                t.copy_(tensors[f"{prefix}.{name}"])

    # ----------------------------------------------------------------------------------------------
    # forward passes

    def response_logits(self, batch: RolloutBatch) -> Tensor:
        """[B, T, V] policy logits that predict each response token.

        Where the model allows it (`response_head_split`), the output layer runs on the response positions'
        hidden states only: the vocabulary projection and its backward skip the prompt and padding positions."""
        with autocast(self.device, self.bf16):
            if self.decoder_and_head is not None:
                decoder, head = self.decoder_and_head
                hidden = decoder(input_ids=batch.ids, attention_mask=batch.attention_mask).last_hidden_state
                return head(gather_positions(hidden, batch.positions))
            logits = self.policy(input_ids=batch.ids, attention_mask=batch.attention_mask).logits
        return gather_positions(logits, batch.positions)

    def response_values(self, batch: RolloutBatch) -> Tensor:
        """[B, T] float32 V(s_t): the value head at the state before each response token."""
        with autocast(self.device, self.bf16):
            values = per_token_values(self.value_model, batch.ids, batch.attention_mask)
        return gather_positions(values.float(), batch.positions)

    def evaluate(self, batch: RolloutBatch, plan: Sequence[Sequence[Tensor]], keep_first: bool = False,
                 ) -> tuple[Tensor, Tensor, Tensor, list[Forward] | None]:
        """π_old logprobs, V_old and entropy, all [B, T], with the current weights, one forward pass per
        micro-batch of `plan` (minibatches, each a list of row-index tensors). With `keep_first`, the first
        minibatch's forward passes keep their autograd graph and are returned as well, for that minibatch's
        optimiser step (else None)."""
        old_logprobs = torch.zeros(batch.mask.shape, dtype=torch.float32, device=self.device)
        old_values = torch.zeros_like(old_logprobs)
        entropy = torch.zeros_like(old_logprobs)
        first: list[Forward] | None = [] if keep_first else None
        for i, minibatch in enumerate(plan):
            for rows in minibatch:
                chunk = batch.select(rows)
                t = chunk.response_len
                with torch.set_grad_enabled(keep_first and i == 0):
                    logits = self.response_logits(chunk)
                    logprobs = token_logprobs(logits, chunk.response_ids)
                    values = self.response_values(chunk)
                old_logprobs[rows, :t] = logprobs.detach().float()
                with torch.no_grad():
                    entropy[rows, :t] = entropy_from_logits(logits.detach()).float()
                old_values[rows, :t] = values.detach()
                if keep_first and i == 0:
                    first.append(Forward(chunk, logprobs, values))
        return old_logprobs, old_values, entropy, first

    # ----------------------------------------------------------------------------------------------
    # one optimiser step

    def minibatch_step(
        self, batch: RolloutBatch, microbatches: Sequence[Tensor], forwards: Sequence[Forward] | None,
        old_logprobs: Tensor, old_values: Tensor, advantages: Tensor, returns: Tensor, is_weights: Tensor,
        ptx_windows: Tensor | None,
    ) -> dict[str, float] | None:
        """One optimiser step of both models on a minibatch (given as its micro-batches of rows): clipped
        surrogate (importance-weighted) plus γ_ptx times the pretraining NLL on `ptx_windows` (None: no
        pretraining term) for the policy, clipped value loss for the value model. `forwards`: the
        micro-batches' forward passes at the current weights, if already run (else they run here).

        The losses are token means over the minibatch; a micro-batch with n of the minibatch's N response
        tokens contributes its own token mean times n / N (its gradient is accumulated right away, which
        frees its activations), so loss, gradient and metrics are the minibatch's, up to float rounding.
        A non-finite loss or gradient anywhere skips the whole minibatch: weights and optimiser state stay
        untouched. Returns the step's metrics and its valid token count (`tokens`), or None when skipped."""
        cfg = self.cfg
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        tokens = float(sum(int(batch.mask[rows].sum()) for rows in microbatches))
        metrics: dict[str, float] = collections.defaultdict(float)
        for j, rows in enumerate(microbatches):
            forward = forwards[j] if forwards is not None else None
            with self.timer("policy_forward"):
                mb = forward.batch if forward is not None else batch.select(rows)
                t = mb.response_len
                logprobs = forward.logprobs if forward is not None else token_logprobs(self.response_logits(mb),
                                                                                       mb.response_ids)
                pg_loss, pg_metrics = ppo_policy_loss(logprobs, old_logprobs[rows, :t], advantages[rows, :t],
                                                      mb.mask, cfg.clip_eps, is_weights=is_weights[rows, :t])
            with self.timer("value_forward"):
                values = forward.values if forward is not None else self.response_values(mb)
                vf_loss, vf_metrics = value_loss(values, old_values[rows, :t], returns[rows, :t], mb.mask,
                                                 cfg.value_clip_eps)
            if not (torch.isfinite(pg_loss) and torch.isfinite(vf_loss)):
                return self._skip(f"non-finite loss (policy {pg_loss.item()}, value {vf_loss.item()})")
            share = float(mb.mask.sum()) / tokens
            # The two models share no parameters and no activations: a backward of each gives the same
            # gradients as one backward through their sum, and lets the profile time them apart.
            with self.timer("policy_backward"):
                (share * pg_loss).backward()
            with self.timer("value_backward"):
                (share * vf_loss).backward()
            metrics["policy_loss"] += share * pg_loss.item()
            metrics["value_loss"] += share * vf_loss.item()
            for key, value in {**pg_metrics, **vf_metrics}.items():
                metrics[key] += share * value
        ptx_loss = None
        if ptx_windows is not None:
            with self.timer("ptx_forward"):
                with autocast(self.device, self.bf16):
                    ptx_loss, _ = causal_lm_loss(self.policy, ptx_windows.to(self.device))
            if not torch.isfinite(ptx_loss):
                return self._skip(f"non-finite pretraining loss {ptx_loss.item()}")
            with self.timer("policy_backward"):
                (cfg.ptx_coef * ptx_loss).backward()
        with self.timer("optimizer"):
            grad_norms = self._clip_and_step()
        if grad_norms is None:
            return None
        out = {"tokens": tokens, **metrics, **grad_norms}
        if ptx_loss is not None:
            out["ptx_loss"] = ptx_loss.item()
        return out

    def _skip(self, why: str) -> None:
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        log.warning("skipping a PPO minibatch: %s", why)

    def _clip_and_step(self) -> dict[str, float] | None:
        """Clip and step both models on their accumulated gradients, or neither: a non-finite gradient norm in
        either skips the minibatch and leaves weights and optimiser state untouched. Returns the gradient
        norms, or None when skipped."""
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        policy_norm = torch.nn.utils.clip_grad_norm_(self.policy_params, max_norm)
        value_norm = torch.nn.utils.clip_grad_norm_(self.value_params, max_norm)
        if not (torch.isfinite(policy_norm) and torch.isfinite(value_norm)):
            self._skip(f"non-finite gradient (policy norm {float(policy_norm)}, value norm {float(value_norm)})")
            return None
        self.policy_optimizer.step()
        self.value_optimizer.step()
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        return {"policy_grad_norm": float(policy_norm), "value_grad_norm": float(value_norm)}

"""The reward model (InstructGPT step 2): the SFT model with a scalar head, trained on K-wise rankings.

The RM stage writes a standard `*ForTokenClassification` (`LlamaForTokenClassification`,
`GPT2ForTokenClassification`, ...) with one label: its head gives a scalar at every position, so the same
checkpoint serves as the reward model (read at the last response token) and as the initial PPO value function
(read at every response token), and, unlike the `*ForSequenceClassification` heads, it has a bias, which
normalisation sets so that demonstrations score mean 0 (the paper normalises its RM before RL). A one-label
`*ForSequenceClassification` checkpoint loads and scores too. Families name the head differently (`score` in
Llama and Qwen2, `classifier` in GPT-2's token classifier): `reward_head` finds it.

This is the one reward-model path: the RM trainer, the RM evaluations and the reward service's scorer
(`raylhf.reward_service.scorer.RewardScorer`) all load with `load_reward_model` and read rewards with
`sequence_rewards` (`score_sequences` for many sequences at once, micro-batched by padded tokens).

Models: `reward_model_from_policy`, `load_reward_model`, `reward_head`. Reading rewards: `per_token_values`,
`sequence_rewards`, `score_sequences`. Training on rankings (InstructGPT Eq. 1): `group_batch`,
`ranking_batch_loss`, `evaluate_rankings`, `train_reward_model`; `normalise_rewards` shifts the bias.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from raylhf.contracts.hf_checkpoint import CheckpointError, require_checkpoint
from raylhf.learners.batching import last_token_index, pack_microbatches, pad_right
from raylhf.learners.ranking_loss import ranking_loss
from raylhf.learners.models import pick_device
from raylhf.learners.training import autocast, cosine_lr, optimizer_step, set_lr

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

    from raylhf.configs.schema import RMConfig


class RankedGroup(NamedTuple):
    """A prompt's K responses as full token sequences and a labeler's ranking of them (a plain
    `(seqs, ranking)` pair is one without ties)."""

    seqs: Sequence[Sequence[int]]  # [K] prompt + response + EOS token ids
    ranking: Sequence[int]  # [K] response indices, best -> worst
    tied: Sequence[bool] | None = None  # [K-1] tied[i]: ranking[i] and ranking[i+1] equally good; None: no ties


# Padded tokens (rows x longest sequence) per forward pass of `score_sequences`: the reward section's
# default (`reward.max_tokens_per_microbatch`), for callers that have no such setting (RM evaluation).
MAX_TOKENS_PER_MICROBATCH = 4096


def reward_model_from_policy(policy_path: str | os.PathLike, device: str | torch.device = "auto",
                             trust_remote_code: bool = False, *, key: str | None = None,
                             dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a causal LM checkpoint's transformer under a fresh scalar head (its LM head is dropped).
    `key` names where the path came from in errors; `dtype` overrides the checkpoint's weight dtype."""
    # deferred: transformers takes seconds to import, and importing this module must not cost them
    from transformers import AutoConfig, AutoModelForTokenClassification

    policy_path = require_checkpoint(policy_path, key, weights=True)
    config = AutoConfig.from_pretrained(str(policy_path), trust_remote_code=trust_remote_code, local_files_only=True)
    config.num_labels = 1
    config.classifier_dropout = 0.0  # dropout on a scalar reward only adds noise to the pairwise margins
    model = AutoModelForTokenClassification.from_pretrained(
        str(policy_path), config=config, use_safetensors=True, trust_remote_code=trust_remote_code,
        local_files_only=True, **({} if dtype is None else {"dtype": dtype}),
    )
    # Start from a constant reward: the head learns from comparisons alone, not from random features.
    head = reward_head(model)
    torch.nn.init.zeros_(head.weight)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return model.to(pick_device(device))


def reward_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The linear layer that maps the last hidden state to the reward: the one linear layer among the model's
    own modules (not its transformer's), with one output. `score` in Llama, Qwen2 and every
    `*ForSequenceClassification`, `classifier` in `GPT2ForTokenClassification`. ValueError if there is none."""
    heads = [(name, m) for name, m in model.named_children() if isinstance(m, torch.nn.Linear)]
    if len(heads) != 1 or heads[0][1].out_features != 1:
        found = ", ".join(f"{name} ({m.out_features} outputs)" for name, m in heads) or "none"
        raise ValueError(f"{type(model).__name__}: expected one linear head with one output beside the transformer, "
                         f"found {found}")
    return heads[0][1]


def load_reward_model(path: str | os.PathLike, device: str | torch.device = "auto", trust_remote_code: bool = False,
                      *, key: str | None = None, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The reward model in checkpoint `path`, in eval mode: a one-label `*ForTokenClassification` (what the RM
    stage writes) or `*ForSequenceClassification`, whose reward is its linear head (`reward_head`) on the
    last hidden state. `key` names where the path came from in errors (`CheckpointError`); `dtype` overrides
    the checkpoint's weight dtype."""
    # deferred: transformers takes seconds to import, and importing this module must not cost them
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    path = require_checkpoint(path, key, weights=True)
    where = f"{key}: {path}" if key else str(path)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if arch.endswith("ForTokenClassification"):
        auto_class = AutoModelForTokenClassification
    elif arch.endswith("ForSequenceClassification"):
        auto_class = AutoModelForSequenceClassification
    else:
        raise CheckpointError(f"{where} holds a {arch}; expected a *ForTokenClassification or "
                              "*ForSequenceClassification reward model")
    if config.num_labels != 1:
        raise CheckpointError(f"{where}: a reward model has one output label, this checkpoint has {config.num_labels}")
    overrides = {} if dtype is None else {"dtype": dtype}
    model = auto_class.from_pretrained(str(path), config=config, use_safetensors=True,
                                       trust_remote_code=trust_remote_code, local_files_only=True, **overrides)
    try:
        reward_head(model)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return model.to(pick_device(device)).eval()


def per_token_values(model: PreTrainedModel, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] float32 scalar head output at every position (the value function's view of the RM).

    Computed as a `*ForTokenClassification`'s own forward computes its logits (transformer, the head's dropout,
    head; dropout is the identity outside training), and for a `*ForSequenceClassification` the same way
    (it has no dropout before its head), instead of its own forward, which keeps only the position it finds by
    searching for the pad id (and refuses batches when the config has no pad id, as GPT-2's)."""
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    for module in model.children():  # the head's own dropout, whatever the family calls it
        if isinstance(module, torch.nn.Dropout):
            hidden = module(hidden)
    return reward_head(model)(hidden).squeeze(-1).float()


def sequence_rewards(model: PreTrainedModel, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] reward of each right-padded sequence: the head's output at its last real token, found from the
    attention mask (not by searching for the pad id, which may also occur inside content)."""
    values = per_token_values(model, ids, attention_mask)
    return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)


@torch.no_grad()
def score_sequences(model: PreTrainedModel, seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device,
                    bf16: bool = False, max_tokens: int = MAX_TOKENS_PER_MICROBATCH) -> np.ndarray:
    """Rewards of many sequences (float64 [N], in input order; non-finite values as the model gave them).

    Sequences are sorted by length and packed into right-padded micro-batches of at most `max_tokens`
    padded tokens (`pack_microbatches`). Right padding under a causal mask leaves every real position's
    output independent of what follows it, so a sequence gets the same reward whatever it is batched
    with, up to float rounding (other batch shapes run other matmul kernels)."""
    model.eval()
    out = np.zeros(len(seqs), dtype=np.float64)
    for batch in pack_microbatches([len(s) for s in seqs], max_tokens):
        ids, mask = pad_right([seqs[i] for i in batch], pad_id)
        with autocast(device, bf16):
            rewards = sequence_rewards(model, ids.to(device), mask.to(device))
        out[batch] = rewards.cpu().numpy()
    return out


def group_batch(groups: Sequence[RankedGroup], pad_id: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flatten P groups into one forward batch: `ids`, `attention_mask` [N, T], `slots` [P, K] mapping
    (prompt, response) -> row (-1 if absent), `order` [P, K], each prompt's ranking (-1 padded), and `tied`
    [P, K-1] (False padded; None when no group has a tie, the loss's untied path)."""
    groups = [RankedGroup(*g) for g in groups]
    seqs = [s for g in groups for s in g.seqs]
    k_max = max(len(g.seqs) for g in groups)
    slots = torch.full((len(groups), k_max), -1, dtype=torch.long)
    order = torch.full((len(groups), k_max), -1, dtype=torch.long)
    tied = torch.zeros((len(groups), k_max - 1), dtype=torch.bool)
    row = 0
    for p, g in enumerate(groups):
        k = len(g.seqs)
        slots[p, :k] = torch.arange(row, row + k)
        order[p, :k] = torch.as_tensor(list(g.ranking), dtype=torch.long)
        if g.tied is not None:
            tied[p, : k - 1] = torch.as_tensor(list(g.tied), dtype=torch.bool)
        row += k
    ids, mask = pad_right(seqs, pad_id)
    return ids, mask, slots, order, tied if bool(tied.any()) else None


def ranking_batch_loss(model: PreTrainedModel, groups: Sequence[RankedGroup], pad_id: int,
                       device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """InstructGPT Eq. 1 over a batch of prompts: all C(K,2) pairs of a prompt (its untied ones) from one
    forward pass."""
    ids, mask, slots, order, tied = group_batch(groups, pad_id)
    rewards = sequence_rewards(model, ids.to(device), mask.to(device))
    # Absent slots read row 0; ranking_loss never looks at them (their `order` entries are -1).
    scores = rewards[slots.clamp(min=0).to(device)]
    return ranking_loss(scores, order.to(device), None if tied is None else tied.to(device))


@torch.no_grad()
def evaluate_rankings(model: PreTrainedModel, groups: Sequence[RankedGroup], pad_id: int, device: torch.device,
                      bf16: bool, batch_prompts: int = 32) -> dict[str, float]:
    """Pairwise accuracy and loss over held-out ranked groups (untied pairs pooled over prompts)."""
    model.eval()
    correct = pairs = loss_sum = 0.0
    for i in range(0, len(groups), batch_prompts):
        chunk = groups[i : i + batch_prompts]
        with autocast(device, bf16):
            loss, m = ranking_batch_loss(model, chunk, pad_id, device)
        correct += m["accuracy"] * m["pairs"]
        pairs += m["pairs"]
        loss_sum += loss.item() * len(chunk)
    return {"accuracy": correct / max(pairs, 1.0), "loss": loss_sum / max(len(groups), 1), "pairs": pairs}


def train_reward_model(
    cfg: RMConfig,
    model: PreTrainedModel,
    train: Sequence[RankedGroup],
    val: Sequence[RankedGroup],
    *,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    seed: int,
    log: Callable[[int, dict], None],
) -> dict[str, float]:
    """Train in place on ranked groups with the `rm` section's epochs, prompts per step, peak learning
    rate and gradient clip (`cfg.val_fraction` is the caller's split). Returns the last epoch's
    held-out metrics (`val_accuracy`, `val_loss`, `val_pairs`)."""
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in reward_head(model).parameters()}
    # The head starts at zero and the trunk from SFT: the head may move faster (`head_lr_scale`).
    optimizer = torch.optim.AdamW([{"params": [p for p in params if id(p) not in head], "lr_scale": 1.0},
                                   {"params": [p for p in params if id(p) in head], "lr_scale": cfg.head_lr_scale}],
                                  lr=cfg.lr, weight_decay=0.0)
    batch_prompts = cfg.batch_prompts
    steps = cfg.epochs * math.ceil(len(train) / batch_prompts)
    step = 0
    bar = tqdm(total=steps, desc="reward model", unit="step", dynamic_ncols=True)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order), batch_prompts):
            set_lr(optimizer, cosine_lr(step, steps, cfg.lr, warmup_steps=min(20, steps // 10)))
            batch = [train[j] for j in order[i : i + batch_prompts]]
            with autocast(device, bf16):
                loss, m = ranking_batch_loss(model, batch, pad_id, device)
            stats = optimizer_step(optimizer, params, loss, cfg.grad_clip)
            step += 1
            log(step, {"loss": loss.item(), "accuracy": m["accuracy"], "epoch": epoch, **stats})
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{m['accuracy']:.2f}")
        val_metrics = evaluate_rankings(model, val, pad_id, device, bf16)
        log(step, {f"val_{k}": v for k, v in val_metrics.items()} | {"epoch": epoch})
    bar.close()
    model.eval()
    return {f"val_{k}": v for k, v in val_metrics.items()}


@torch.no_grad()
def normalise_rewards(model: PreTrainedModel, reference_seqs: Sequence[Sequence[int]], pad_id: int,
                      device: torch.device) -> float:
    """Shift the head's bias so the reference sequences (demonstrations) score mean 0; returns the shift.
    ValueError for a head without a bias (a `*ForSequenceClassification` reward model)."""
    head = reward_head(model)
    if head.bias is None:
        raise ValueError(f"{type(model).__name__}: its reward head has no bias to normalise the rewards with")
    mean = float(score_sequences(model, reference_seqs, pad_id, device).mean())
    head.bias -= mean
    return mean

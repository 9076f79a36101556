"""The reward model (InstructGPT step 2): the SFT model with a scalar head, trained on K-wise rankings.

The RM is a standard `LlamaForTokenClassification` (any `*ForTokenClassification`) with one label:
its head gives a scalar at every position, so the same checkpoint serves as the reward model (read at
the last response token) and as the initial PPO value function (read at every response token), and,
unlike the `*ForSequenceClassification` heads, it has a bias, which normalisation sets so that
demonstrations score mean 0 (the paper normalises its RM before RL).

Models: `reward_model_from_policy`, `load_reward_model`. Reading rewards: `per_token_values`,
`sequence_rewards`, `score_sequences`. Training on rankings (InstructGPT Eq. 1): `group_batch`,
`ranking_batch_loss`, `evaluate_rankings`, `train_reward_model`; `normalise_rewards` shifts the bias.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from raylhf.learners.batching import last_token_index, pad_right
from raylhf.learners.losses import ranking_loss
from raylhf.learners.models import CheckpointConfigError, pick_device, require_checkpoint
from raylhf.learners.training import autocast, cosine_lr, optimizer_step, set_lr

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.configs.schema import RMConfig

# A prompt's K responses as full token sequences (prompt + response + EOS), and the ranking of them
# (indices best -> worst).
RankedGroup = tuple[Sequence[Sequence[int]], Sequence[int]]


def reward_model_from_policy(policy_path: str | os.PathLike, device: str = "auto", trust_remote_code: bool = False,
                             *, key: str | None = None):
    """Load a causal LM checkpoint's transformer under a fresh scalar head (its LM head is dropped).
    `key` names where the path came from in errors."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    policy_path = require_checkpoint(policy_path, key, weights=True)
    config = AutoConfig.from_pretrained(str(policy_path), trust_remote_code=trust_remote_code, local_files_only=True)
    config.num_labels = 1
    config.classifier_dropout = 0.0  # dropout on a scalar reward only adds noise to the pairwise margins
    model = AutoModelForTokenClassification.from_pretrained(
        str(policy_path), config=config, use_safetensors=True, trust_remote_code=trust_remote_code,
        local_files_only=True,
    )
    # Start from a constant reward: the head learns from comparisons alone, not from random features.
    torch.nn.init.zeros_(model.score.weight)
    torch.nn.init.zeros_(model.score.bias)
    return model.to(pick_device(device))


def load_reward_model(path: str | os.PathLike, device: str = "auto", trust_remote_code: bool = False, *,
                      key: str | None = None):
    """The reward model in checkpoint `path` (one label); `key` names where the path came from in errors."""
    from transformers import AutoModelForTokenClassification

    path = require_checkpoint(path, key, weights=True)
    model = AutoModelForTokenClassification.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if model.config.num_labels != 1:
        where = f"{key}: {path}" if key else str(path)
        raise CheckpointConfigError(f"{where}: a reward model has one output label, this checkpoint has "
                                    f"{model.config.num_labels}")
    return model.to(pick_device(device)).eval()


def per_token_values(model, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] scalar head output at every position (the value function's view of the RM)."""
    return model(input_ids=ids, attention_mask=attention_mask).logits.squeeze(-1).float()


def sequence_rewards(model, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] reward of each right-padded sequence: the head's output at its last real token."""
    values = per_token_values(model, ids, attention_mask)
    return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)


@torch.no_grad()
def score_sequences(model, seqs: Sequence[Sequence[int]], pad_id: int, device, bf16: bool = False,
                    batch_size: int = 64) -> np.ndarray:
    """Rewards of many sequences (float64 [N]), batched by similar length."""
    model.eval()
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.zeros(len(seqs), dtype=np.float64)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        ids, mask = pad_right([seqs[j] for j in idx], pad_id)
        with autocast(device, bf16):
            r = sequence_rewards(model, ids.to(device), mask.to(device))
        out[idx] = r.float().cpu().numpy()
    return out


def group_batch(groups: Sequence[RankedGroup], pad_id: int):
    """Flatten P groups into one forward batch; `slots` [P, K] maps (prompt, response) -> row, -1 if absent."""
    seqs = [s for g in groups for s in g[0]]
    k_max = max(len(g[0]) for g in groups)
    slots = torch.full((len(groups), k_max), -1, dtype=torch.long)
    order = torch.full((len(groups), k_max), -1, dtype=torch.long)
    row = 0
    for p, (responses, ranking) in enumerate(groups):
        k = len(responses)
        slots[p, :k] = torch.arange(row, row + k)
        order[p, :k] = torch.as_tensor(list(ranking), dtype=torch.long)
        row += k
    ids, mask = pad_right(seqs, pad_id)
    return ids, mask, slots, order


def ranking_batch_loss(model, groups: Sequence[RankedGroup], pad_id: int, device):
    """InstructGPT Eq. 1 over a batch of prompts: all C(K,2) pairs of a prompt from one forward pass."""
    ids, mask, slots, order = group_batch(groups, pad_id)
    rewards = sequence_rewards(model, ids.to(device), mask.to(device))
    # Absent slots read row 0; ranking_loss never looks at them (their `order` entries are -1).
    scores = rewards[slots.clamp(min=0).to(device)]
    return ranking_loss(scores, order.to(device))


@torch.no_grad()
def evaluate_rankings(model, groups: Sequence[RankedGroup], pad_id: int, device, bf16: bool,
                      batch_prompts: int = 32) -> dict[str, float]:
    """Pairwise accuracy and loss over held-out ranked groups (pairs pooled over prompts)."""
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
    model,
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
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
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
def normalise_rewards(model, reference_seqs: Sequence[Sequence[int]], pad_id: int, device) -> float:
    """Shift the head's bias so the reference sequences (demonstrations) score mean 0; returns the shift."""
    mean = float(score_sequences(model, reference_seqs, pad_id, device).mean())
    model.score.bias -= mean
    return mean

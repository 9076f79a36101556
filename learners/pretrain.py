"""Pretraining the demo base model: next-token prediction on packed documents.

`pack_documents` builds the token stream, `sample_windows` draws training windows from it,
`causal_lm_loss` is the loss on a batch of windows (also the ptx term of PPO-ptx), `evaluate_lm` the
held-out loss and `pretrain` the training loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from raylhf.learners.lm_losses import lm_loss
from raylhf.learners.training import autocast, cosine_lr, optimizer_step, set_lr

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.configs.schema import PretrainConfig


def pack_documents(docs: Sequence[Sequence[int]], bos_id: int | None, eos_id: int) -> np.ndarray:
    """One token stream `[BOS] doc [EOS] [BOS] doc [EOS] ...` (int32 [N]); without a BOS token (Qwen2)
    documents are separated by EOS alone. A tokenizer whose BOS is its EOS (GPT-2) writes it once between
    documents."""
    head = [] if bos_id is None or bos_id == eos_id else [bos_id]
    parts = [np.asarray([*head, *d, eos_id], dtype=np.int32) for d in docs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def sample_windows(stream: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """[batch_size, seq_len + 1] random windows of the stream (inputs and shifted labels)."""
    if len(stream) <= seq_len + 1:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    return torch.from_numpy(np.stack([stream[s : s + seq_len + 1] for s in starts]).astype(np.int64))


def causal_lm_loss(model: torch.nn.Module, windows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """LM loss on [B, T+1] windows: predict tokens 1..T from 0..T-1, every position counts."""
    logits = model(input_ids=windows[:, :-1]).logits
    labels = windows[:, 1:]
    return lm_loss(logits.float(), labels, torch.ones_like(labels, dtype=torch.float32))


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, stream: np.ndarray, seq_len: int, device: torch.device, bf16: bool,
                max_windows: int = 64) -> float:
    """Mean token NLL over consecutive non-overlapping windows of a held-out stream."""
    model.eval()
    n = min(max_windows, (len(stream) - 1) // seq_len)
    if n == 0:
        raise ValueError(f"held-out corpus has {len(stream)} tokens, fewer than one window of {seq_len + 1}")
    windows = torch.from_numpy(np.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]).astype(np.int64))
    total = 0.0
    for chunk in windows.split(16):
        with autocast(device, bf16):
            loss, _ = causal_lm_loss(model, chunk.to(device))
        total += loss.item() * len(chunk)
    return total / n


def pretrain(
    cfg: PretrainConfig,
    model: torch.nn.Module,
    train_stream: np.ndarray,
    heldout_stream: np.ndarray,
    *,
    device: torch.device,
    bf16: bool,
    seed: int,
    log: Callable[[int, dict], None],
    eval_every: int = 250,
) -> dict[str, float]:
    """Train `model` in place on random windows of `train_stream` with the `pretrain` section's steps,
    batch size, window length, peak learning rate (warm-up, cosine decay) and AdamW weight decay; the
    held-out loss is measured every `eval_every` steps and at the end. Returns the last step's metrics."""
    rng = np.random.default_rng(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    metrics: dict[str, float] = {}
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step", dynamic_ncols=True)
    for step in bar:
        set_lr(optimizer, cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup_steps))
        windows = sample_windows(train_stream, cfg.batch_size, cfg.seq_len, rng).to(device)
        with autocast(device, bf16):
            loss, m = causal_lm_loss(model, windows)
        metrics = {"loss": loss.item(), **optimizer_step(optimizer, params, loss, grad_clip=1.0)}
        if (step + 1) % eval_every == 0 or step + 1 == cfg.steps:
            metrics["heldout_loss"] = evaluate_lm(model, heldout_stream, cfg.seq_len, device, bf16)
            model.train()
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["tokens"] = (step + 1) * cfg.batch_size * cfg.seq_len
        log(step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
    model.eval()
    return metrics

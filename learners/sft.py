"""Supervised fine-tuning on demonstrations (InstructGPT step 1): loss on response tokens only.

`response_lm_loss` is the loss of a batch of (prompt, response) examples, `ResidualDropout` the
paper's residual dropout as forward hooks, `validation_loss` the held-out loss, `train_sft` the
training loop (keeps the best epoch) and `response_logprobs` log π(response | prompt) per example.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from raylhf.learners.batching import prompt_response_batch
from raylhf.learners.lm_losses import lm_loss, token_logprobs
from raylhf.learners.training import autocast, cosine_lr, optimizer_step, set_lr

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.configs.schema import SFTConfig

Example = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, response_ids)


def response_lm_loss(model: torch.nn.Module, examples: Sequence[Example], pad_id: int,
                     device: torch.device) -> tuple[torch.Tensor, dict]:
    """Token NLL of the response tokens given the prompt; prompt and padding tokens carry no loss."""
    ids, attention_mask, response_mask = prompt_response_batch(examples, pad_id)
    ids, attention_mask, response_mask = ids.to(device), attention_mask.to(device), response_mask.to(device)
    logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1]
    return lm_loss(logits.float(), ids[:, 1:], response_mask[:, 1:].float())


class ResidualDropout:
    """Dropout on each decoder layer's residual update, `h + drop(f(h))` (InstructGPT SFT: 0.2).

    Llama has no residual dropout of its own; forward hooks add it without changing the saved model.
    """

    def __init__(self, layers: Sequence[torch.nn.Module], p: float):
        self.p = p
        self.handles = [layer.register_forward_hook(self._hook) for layer in layers] if p > 0 else []

    def _hook(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...],
              output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not module.training:
            return output
        hidden_in = args[0] if args else None
        hidden_out = output[0] if isinstance(output, tuple) else output
        if hidden_in is None:
            return output
        dropped = hidden_in + torch.nn.functional.dropout(hidden_out - hidden_in, self.p, training=True)
        return (dropped, *output[1:]) if isinstance(output, tuple) else dropped

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def validation_loss(model: torch.nn.Module, examples: Sequence[Example], pad_id: int, device: torch.device, bf16: bool,
                    batch_size: int) -> float:
    model.eval()
    total, tokens = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        with autocast(device, bf16):
            loss, m = response_lm_loss(model, examples[i : i + batch_size], pad_id, device)
        total += loss.item() * m["tokens"]
        tokens += m["tokens"]
    return total / max(tokens, 1.0)


def train_sft(
    cfg: SFTConfig,
    model: torch.nn.Module,
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    pad_id: int,
    device: torch.device,
    bf16: bool,
    seed: int,
    log: Callable[[int, dict], None],
) -> dict[str, float]:
    """Train in place with the `sft` section's epochs, batch size, peak learning rate, gradient clip and
    residual dropout (`cfg.val_fraction` is the caller's split); on return the model holds the weights of
    the epoch with the best validation loss."""
    rng = np.random.default_rng(seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    dropout = ResidualDropout(model.model.layers, cfg.residual_dropout) if hasattr(model, "model") else None
    batch_size = cfg.batch_size
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = cfg.epochs * steps_per_epoch
    best = {"val_loss": validation_loss(model, val, pad_id, device, bf16, batch_size), "epoch": 0}
    best_state = copy.deepcopy(model.state_dict())
    log(0, {"val_loss": best["val_loss"], "epoch": 0})
    step = 0
    bar = tqdm(total=total, desc="sft", unit="step", dynamic_ncols=True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            order = rng.permutation(len(train))
            for i in range(0, len(order), batch_size):
                batch = [train[j] for j in order[i : i + batch_size]]
                set_lr(optimizer, cosine_lr(step, total, cfg.lr, warmup_steps=min(20, total // 10)))
                with autocast(device, bf16):
                    loss, m = response_lm_loss(model, batch, pad_id, device)
                stats = optimizer_step(optimizer, params, loss, cfg.grad_clip)
                step += 1
                log(step, {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"], "epoch": epoch, **stats})
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            val_loss = validation_loss(model, val, pad_id, device, bf16, batch_size)
            log(step, {"val_loss": val_loss, "epoch": epoch})
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch}
                best_state = copy.deepcopy(model.state_dict())
    finally:
        bar.close()
        if dropout:
            dropout.remove()
    model.load_state_dict(best_state)
    model.eval()
    return {"best_val_loss": best["val_loss"], "best_epoch": float(best["epoch"]), "steps": float(step)}


@torch.no_grad()
def response_logprobs(model: torch.nn.Module, examples: Sequence[Example], pad_id: int, device: torch.device,
                      batch_size: int = 64) -> np.ndarray:
    """log π(response | prompt) of each example (float64 [N]): the sum of its response tokens' logprobs."""
    model.eval()
    out = np.zeros(len(examples), dtype=np.float64)
    for i in range(0, len(examples), batch_size):
        ids, attention_mask, response_mask = prompt_response_batch(examples[i : i + batch_size], pad_id)
        ids, attention_mask, response_mask = ids.to(device), attention_mask.to(device), response_mask.to(device)
        logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1].float()
        logp = token_logprobs(logits, ids[:, 1:]) * response_mask[:, 1:]
        out[i : i + len(ids)] = logp.sum(dim=1).double().cpu().numpy()
    return out

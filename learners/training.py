"""Pieces every trainer shares: precision (`bf16_supported`, `use_bf16`, `autocast`), LR schedule
(`cosine_lr`, `set_lr`), one guarded optimiser step (`optimizer_step`) and the metrics log (`MetricsLog`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

import torch


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # bf16 autocast on CPU pays off only with native bf16 instructions (≈ 1.7x here); emulated it is slower.
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """`precision` is the config's `train_precision`: auto | bf16 | fp32."""
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


def autocast(device: torch.device, enabled: bool):
    """Mixed precision for forward passes: weights and optimiser state stay fp32."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cosine_lr(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0, floor: float = 0.1) -> float:
    """Linear warm-up to `peak_lr`, then cosine decay to `floor * peak_lr` at `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group at `lr`, times the group's own `lr_scale` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_step(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], loss: torch.Tensor,
                   grad_clip: float) -> dict[str, float]:
    """Backward, clip the global gradient norm, step. A non-finite loss or gradient skips the step."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return {"skipped": 1.0, "grad_norm": float("nan")}
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return {"skipped": 1.0, "grad_norm": float("nan")}
    optimizer.step()
    return {"skipped": 0.0, "grad_norm": float(grad_norm)}


class MetricsLog:
    """Appends one JSON object per line: {"stage", "step", "time", **metrics} — easy to plot."""

    def __init__(self, path: str | os.PathLike | None, stage: str):
        self.path = Path(path) if path else None
        self.stage = stage
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.path:
            return
        row = {"stage": self.stage, "step": step, "time": time.time(), **metrics}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> int:
        """Drop this stage's rows past `step` (logged by an interrupted run after its last checkpoint, which
        the resumed run logs again); returns how many were dropped."""
        if not self.path or not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if not self._past(line, step)]
        if len(keep) < len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(keep))
            tmp.replace(self.path)
        return len(lines) - len(keep)

    def _past(self, line: str, step: int) -> bool:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return False
        return row.get("stage") == self.stage and row.get("step", 0) > step

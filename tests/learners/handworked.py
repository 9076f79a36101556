"""What the hand-worked loss tests share: float64 tensors from nested lists, comparison within a tolerance,
and padding that holds garbage."""

from __future__ import annotations

import torch

TOL = 1e-6


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def close(actual, expected, tol=TOL):
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().tolist()
    if isinstance(actual, list):
        flat_a = torch.tensor(actual, dtype=torch.float64).flatten().tolist()
        flat_e = torch.tensor(expected, dtype=torch.float64).flatten().tolist()
        assert len(flat_a) == len(flat_e), (actual, expected)
        return all(abs(a - e) <= tol for a, e in zip(flat_a, flat_e))
    return abs(actual - expected) <= tol


def pad(x, n, value):
    """Append n columns filled with `value` (garbage) to a [B, T] tensor."""
    return torch.cat([x, torch.full((x.shape[0], n), value, dtype=x.dtype)], dim=1)


def pad_mask(mask, n):
    return torch.cat([mask, torch.zeros(mask.shape[0], n, dtype=mask.dtype)], dim=1)

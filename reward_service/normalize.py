"""`RewardTransform`: reward normalisation and clipping, applied to the weighted sum of the sources.

Order: `r -> normalise(r) -> clip(r, -c, c)`. Normalisation is
  - `none`: r unchanged,
  - `fixed`: `(r - shift) * scale` (InstructGPT shifts the RM so labeler demonstrations score 0 on average),
  - `running`: `(r - mean) / sqrt(var + eps)` with the mean and variance of every reward seen so far,
    the current batch included (merged with Chan et al.'s parallel update). The state is saved with
    `state_dict()` so a resumed run continues with the same statistics.
In a `RewardPool` one transform lives in the driver, so all actors share one set of statistics.
"""

from __future__ import annotations

import math
from typing import Sequence

from raylhf.configs.schema import RewardConfig


class RewardTransform:
    """The normalisation and clipping `cfg` asks for (`normalize`, `shift`, `scale`, `clip`).

    Args:
        cfg: the reward section; the other fields are not read.
        eps: added to the running variance before the square root (`running` only).
    """

    def __init__(self, cfg: RewardConfig, *, eps: float = 1e-8):
        self.normalize = cfg.normalize
        self.shift, self.scale, self.clip, self.eps = cfg.shift, cfg.scale, cfg.clip, eps
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def is_identity(self) -> bool:
        return self.normalize == "none" and self.clip is None

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def _update(self, values: Sequence[float]) -> None:
        n = len(values)
        if n == 0:
            return
        b_mean = sum(values) / n
        b_m2 = sum((v - b_mean) ** 2 for v in values)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta * delta * self.count * n / total
        self.count = total

    def __call__(self, rewards: Sequence[float]) -> list[float]:
        out = [float(r) for r in rewards]
        if self.normalize == "fixed":
            out = [(r - self.shift) * self.scale for r in out]
        elif self.normalize == "running":
            self._update(out)
            denom = math.sqrt(self.m2 / self.count + self.eps)
            out = [(r - self.mean) / denom for r in out]
        if self.clip is not None:
            out = [min(max(r, -self.clip), self.clip) for r in out]
        return out

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


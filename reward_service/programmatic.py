"""Programmatic reward sources, loaded by import path, and their weighted sum with the reward model.

A source is one of
  - `rm`: the reward model's scalar (computed by `RewardScorer`),
  - `function`: `fn(prompts: list[str], responses: list[str], **kwargs) -> list[float]`, on text decoded
    with the tokenizer (special tokens dropped: no BOS, no EOS),
  - `token_function`: `fn(prompt_ids: list[list[int]], response_ids: list[list[int]], **kwargs) -> list[float]`,
    on the raw token ids (prompt with BOS, response with EOS when the response ended on it).
Functions are batched: one call per micro-batch of rollouts, one float per rollout, in order.
They are named `package.module:function` (a dotted attribute after the colon is allowed) and must be
importable where the scorer runs (installed, or on the Ray workers' PYTHONPATH).
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

from raylhf.reward_service.errors import RewardConfigError, ScoringError

SourceKind = Literal["rm", "function", "token_function"]
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class RewardSource:
    """One term of the reward: `weight * r` where r comes from the RM or a function."""

    kind: SourceKind = "rm"
    weight: float = 1.0
    path: str | None = None  # "package.module:function" for function / token_function
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = "reward.sources"  # config key named in errors


def sources_from_config(sources: Sequence[Any]) -> list[RewardSource]:
    """`RewardSourceConfig` sections (or any objects with kind/weight/path/kwargs) -> `RewardSource`s."""
    return [
        RewardSource(
            kind=s.kind, weight=float(s.weight), path=s.path, kwargs=dict(s.kwargs), key=f"reward.sources[{i}]"
        )
        for i, s in enumerate(sources)
    ]


def load_reward_function(path: str, key: str = "reward.sources") -> Callable[..., Any]:
    """Resolve `package.module:function`; any failure is a `RewardConfigError` naming `key` and `path`."""
    if not isinstance(path, str) or not _IMPORT_PATH.match(path):
        raise RewardConfigError(f"{key}.path: {path!r} is not an import path of the form 'package.module:function'")
    module_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module itself failing to import
        raise RewardConfigError(
            f"{key}.path: cannot import module {module_name!r} of {path!r}: {type(e).__name__}: {e}"
        ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardConfigError(f"{key}.path: {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardConfigError(f"{key}.path: {path!r} resolves to a {type(obj).__name__}, not a function")
    return obj


def validate_sources(sources: Sequence[RewardSource]) -> None:
    """Check kinds, weights and import paths up front, so a bad config fails at construction."""
    if not sources:
        raise RewardConfigError("reward.sources: at least one reward source is needed")
    if sum(s.kind == "rm" for s in sources) > 1:
        raise RewardConfigError("reward.sources: at most one `rm` source")
    for s in sources:
        if s.kind not in ("rm", "function", "token_function"):
            raise RewardConfigError(f"{s.key}.kind: unknown kind {s.kind!r}; expected rm, function or token_function")
        if not math.isfinite(s.weight):
            raise RewardConfigError(f"{s.key}.weight: must be finite (got {s.weight!r})")
        if s.kind == "rm":
            if s.path is not None:
                raise RewardConfigError(f"{s.key}.path: an `rm` source takes no path (got {s.path!r})")
        else:
            load_reward_function(s.path, s.key)  # type: ignore[arg-type]


class ProgrammaticReward:
    """A resolved `function` / `token_function` source with its kwargs bound; checks what it returns."""

    def __init__(self, source: RewardSource):
        if source.kind not in ("function", "token_function") or source.path is None:
            raise RewardConfigError(f"{source.key}: not a function source ({source.kind})")
        self.source = source
        self.kind = source.kind
        self.path = source.path
        self._fn = functools.partial(load_reward_function(source.path, source.key), **source.kwargs)

    def __call__(self, prompts: Sequence[Any], responses: Sequence[Any], sample_ids: Sequence[str]) -> list[float]:
        n = len(responses)
        try:
            out = self._fn(list(prompts), list(responses))
        except Exception as e:
            raise ScoringError(f"reward function {self.path} raised {type(e).__name__}: {e}", cause=repr(e)) from e
        try:
            values = [float(v) for v in out]
        except TypeError as e:
            got = type(out).__name__
            raise ScoringError(f"reward function {self.path} returned {got}, expected a list of floats") from e
        if len(values) != n:
            raise ScoringError(f"reward function {self.path} returned {len(values)} values for {n} rollouts")
        bad = [sid for sid, v in zip(sample_ids, values) if not math.isfinite(v)]
        if bad:
            raise ScoringError(f"reward function {self.path} returned a non-finite reward for samples {bad[:5]}")
        return values

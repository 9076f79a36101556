"""Programmatic reward sources, loaded by import path, and their weighted sum with the reward model.

A source (`reward.sources[i]`, a `RewardSourceConfig`) is one of
  - `rm`: the reward model's scalar (computed by `RewardScorer`),
  - `function`: `fn(prompts: list[str], responses: list[str], **kwargs) -> list[float]`, on text decoded
    with the tokenizer (special tokens dropped: no BOS, no EOS),
  - `token_function`: `fn(prompt_ids: list[list[int]], response_ids: list[list[int]], **kwargs) -> list[float]`,
    on the raw token ids (prompt with BOS, response with EOS when the response ended on it).
Functions are batched: one call per request, over the rollouts that are still scorable, one float per
rollout, in order. A NaN or inf quarantines that rollout (`raylhf.reward_service.rejects`); a function
that raises fails the request.
They are named `package.module:function` (a dotted attribute after the colon is allowed) and must be
importable where the scorer runs (installed, or on the Ray workers' PYTHONPATH). `ProgrammaticReward`
is one resolved function source.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any, Callable, Sequence

from raylhf.configs.schema import RewardSourceConfig
from raylhf.configs.sections.reward import MODEL_KINDS
from raylhf.reward_service.errors import RewardConfigError, ScoringError

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def source_key(index: int) -> str:
    """The config key of `reward.sources[index]`, as errors name it."""
    return f"reward.sources[{index}]"


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


def validate_sources(sources: Sequence[RewardSourceConfig]) -> None:
    """Resolve every function source's import path up front, so a config naming a function that does not
    import fails at construction, before any scoring."""
    for i, s in enumerate(sources):
        if s.kind not in MODEL_KINDS:
            load_reward_function(s.path, source_key(i))  # type: ignore[arg-type]


class ProgrammaticReward:
    """A resolved `function` / `token_function` source with its kwargs bound; checks what it returns.

    Args:
        source: the source's config section.
        key: its config key, named in errors (e.g. ``reward.sources[1]``).
    """

    def __init__(self, source: RewardSourceConfig, key: str):
        self.source = source
        self.kind = source.kind
        self.path = source.path  # set: the schema requires a path of every function source
        self._fn = functools.partial(load_reward_function(source.path, key), **source.kwargs)

    def __call__(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        """One float per rollout, in order. A function that raises, or returns anything but one number per
        rollout, fails the request (`ScoringError`); a NaN or inf is returned as it is, for the scorer to
        quarantine that rollout alone."""
        n = len(responses)
        try:
            out = self._fn(list(prompts), list(responses))
        except Exception as e:
            raise ScoringError(f"reward function {self.path} raised {type(e).__name__}: {e}", cause=repr(e)) from e
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError) as e:
            got = type(out).__name__
            raise ScoringError(f"reward function {self.path} returned {got}, expected a list of floats") from e
        if len(values) != n:
            raise ScoringError(f"reward function {self.path} returned {len(values)} values for {n} rollouts")
        return values

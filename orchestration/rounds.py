"""Iterated RLHF bookkeeping: which prompts a round ranks, which policies it samples, how its comparisons are
tagged, which files its reward model trains on, and the config of its PPO stage. Pure functions of the
config, the run's paths and records, so the rounds in `raylhf.orchestration.pipeline` (`run_round`) read as the
dataflow.

Rounds are numbered from 0: round 0 is the first pipeline (comparisons on the SFT policy, reward model, PPO),
round r >= 1 lives in `<run>/rounds/<r>/` (`RunPaths.round`). The policy a round ends with is `round<r>`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Sequence

from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.contracts.records import Comparison, Prompt
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.ppo_checkpoint import PPOCheckpoint

SEED_SOURCE = "seed"  # `Comparison.source` of the task's own rankings of demonstrator responses
CURRENT = "current"  # `iterate.policies`: the policy the round continues
_ROUND_POLICY = re.compile(r"round(\d+)")


def policy_name(r: int) -> str:
    """Name of the policy round `r` ends with (`round0` is the first PPO policy)."""
    return f"round{r}"


def policy_path(paths: RunPaths, r: int) -> Path:
    """Checkpoint of the policy round `r` ends with."""
    return paths.round(r).model("ppo")


def round_policies(paths: RunPaths, r: int, specs: Sequence[str]) -> dict[str, Path]:
    """The `iterate.policies` of round `r` as `{name: checkpoint}`: `current` is the previous round's policy,
    `roundN` an earlier round's, `sft`/`base` the run's models, anything else a checkpoint path (checked where
    it is loaded). A round that has not finished before round `r` starts is a config error."""
    out: dict[str, Path] = {}
    for spec in specs:
        match = _ROUND_POLICY.fullmatch(spec)
        if spec == CURRENT:
            out[policy_name(r - 1)] = policy_path(paths, r - 1)
        elif match:
            n = int(match.group(1))
            if n >= r:
                raise ConfigError(f"iterate.policies: '{spec}' is not a policy round {r} can sample: only rounds "
                                  f"before it have finished (round0..round{r - 1})")
            out[spec] = policy_path(paths, n)
        elif spec in ("sft", "base"):
            out[spec] = paths.round(0).model(spec)
        else:
            out[Path(spec).name or spec] = Path(spec)
    return out


def used_prompt_ids(comparisons: Iterable[Comparison]) -> set[str]:
    """Prompts some round has ranked policy samples for (the task's seed rankings do not count)."""
    return {c.prompt_id for c in comparisons if c.source != SEED_SOURCE}


def fresh_prompts(prompts: Sequence[Prompt], earlier: Iterable[Comparison], n: int) -> list[Prompt]:
    """The first `n` prompts, in split order, that no earlier round ranked samples for (fewer when the split
    runs out)."""
    used = used_prompt_ids(earlier)
    return [p for p in prompts if p.prompt_id not in used][:n]


def source_tag(policies: Iterable[str]) -> str:
    """`Comparison.source` of rows whose responses were sampled from these policies."""
    return "+".join(policies)


def tagged(comparisons: Iterable[Comparison], r: int, source: str) -> list[Comparison]:
    return [dataclasses.replace(c, round=r, source=source) for c in comparisons]


def comparison_files(paths: RunPaths, r: int) -> list[Path]:
    """The comparisons every round up to `r` collected (round 0's include the task's seed rankings): the
    reward model of round `r` trains on all of them."""
    return [paths.round(i).comparisons for i in range(r + 1)]


def rm_init_path(cfg: RunConfig, paths: RunPaths, r: int) -> Path | None:
    """The reward model a round's reward model continues (`iterate.rm_init: previous`), or None for a fresh
    scalar head on the SFT model."""
    return paths.round(r - 1).model("rm") if cfg.iterate.rm_init == "previous" else None


def value_init_path(cfg: RunConfig, paths: RunPaths, r: int) -> Path:
    """Checkpoint a round's PPO value function starts from (`iterate.value_init`): the round's reward model,
    or the value model of the previous round's last PPO checkpoint."""
    if cfg.iterate.value_init == "rm":
        return paths.round(r).model("rm")
    latest = PPOCheckpoint(paths.round(r - 1).root).latest()
    if latest is None:
        raise ConfigError(f"iterate.value_init: 'previous', but round {r - 1} left no PPO checkpoint (with its value "
                          f"model) under {paths.round(r - 1).root / 'checkpoints'}; use 'rm'")
    return latest / "value"


def ppo_config(cfg: RunConfig, r: int) -> RunConfig:
    """Round `r`'s PPO stage: `iterate.ppo_steps` learner steps, and a seed of its own so that its prompt order
    and samples differ from earlier rounds'."""
    return cfg.model_copy(update={"seed": cfg.seed + r,
                                  "ppo": cfg.ppo.model_copy(update={"total_steps": cfg.iterate.ppo_steps})})

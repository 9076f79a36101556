"""The collect stage of every round: K samples per prompt from the round's policies, ranked by the labeler,
tagged with the round and the policies, written as the round's comparisons.

One stage, `stage_collect`, runs a `CollectPlan`; the rounds differ only in their plan. Round 0
(`first_round_plan`) samples `collect.policies` x `collect.temperatures` on the first `collect.n_prompts`
training prompts and appends the task's own seed rankings; iteration round r >= 1 (`iteration_round_plan`)
samples `iterate.policies` x `iterate.temperatures` on training prompts no earlier round ranked.

The stage is two steps, whoever ranks: the sample step (`sample_and_rank.sample_candidates`) and the rank step,
by the task's simulated labeler at once (`collect.labeler: simulated`), or by people through `raylhf label`
(`human`: `human_rankings.human_comparisons`, which may stop the command until they have ranked).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.contracts.dataio import write_records
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.protocols import Labeler
from raylhf.contracts.records import Comparison, Prompt
from raylhf.labeling.store import BatchItem
from raylhf.orchestration import rounds, sample_and_rank
from raylhf.orchestration.human_rankings import human_comparisons
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import read_data
from raylhf.orchestration.provenance import provenance


@dataclasses.dataclass(frozen=True)
class CollectPlan:
    """What one round's collect stage samples, from which policies, and where it writes the comparisons."""

    round: int  # tags every row; the samples are drawn with seed `cfg.seed + round`
    prompts: list[Prompt]
    policies: dict[str, Path]  # {name: checkpoint}; their names joined are the rows' `source`
    temperatures: list[float]
    out: Path
    samples: int | None = None  # drawn per prompt; None: K and a spare one per policy x temperature
    seed_comparisons: Path | None = None  # the task's own rankings, appended to `out` when the file exists
    earlier: int = 0  # comparisons the earlier rounds collected: the summary's `total` counts them too
    label_flags: tuple[str, ...] = ()  # how `raylhf label` finds the batch under `collect.labeler: human`


def first_round_plan(cfg: RunConfig, policies: dict[str, Path], prompts_path: Path, out: Path,
                     seed_comparisons: Path | None = None, label_flags: tuple[str, ...] = ()) -> CollectPlan:
    """Round 0: the first `collect.n_prompts` prompts of `prompts_path`, sampled from `policies` (checked where
    they were named, `stages.resolve_policy`) x `collect.temperatures`. `label_flags`: `("--out", F)` for an
    output other than the run's own comparisons."""
    prompts = read_data(cfg, prompts_path, Prompt)[: cfg.collect.n_prompts]
    return CollectPlan(0, prompts, policies, cfg.collect.temperatures, out, seed_comparisons=seed_comparisons,
                       label_flags=label_flags)


def iteration_round_plan(cfg: RunConfig, paths: RunPaths, r: int) -> CollectPlan:
    """Iteration round `r` >= 1: `iterate.n_prompts` training prompts none of rounds 0..r-1 ranked, sampled
    `iterate.samples_per_prompt` times each from `iterate.policies` x `iterate.temperatures`, into the round's
    `comparisons.jsonl`. `paths` are the run's."""
    n = cfg.iterate.n_prompts
    earlier = [c for f in rounds.comparison_files(paths, r - 1) for c in read_data(cfg, f, Comparison)]
    prompts = rounds.fresh_prompts(read_data(cfg, paths.prompts("train"), Prompt), earlier, n)
    if len(prompts) < n:
        raise ConfigError(f"iterate.n_prompts: round {r} needs {n} training prompts no earlier round ranked, "
                          f"only {len(prompts)} are left in {paths.prompts('train')}; lower it or raise "
                          "task.n_train_prompts")
    policies = rounds.round_policies(paths, r, cfg.iterate.policies)
    for name, path in policies.items():
        require_checkpoint(path, f"iterate.policies '{name}'", weights=True)
    return CollectPlan(r, prompts, policies, cfg.iterate.temperatures, paths.round(r).comparisons,
                       samples=cfg.iterate.samples_per_prompt, earlier=len(earlier), label_flags=("--round", str(r)))


def stage_collect(cfg: RunConfig, plan: CollectPlan, labeler: Labeler | None, wait: bool = False) -> dict[str, Any]:
    """Sample the plan's prompts, have up to `collect.k` distinct responses of each ranked (by `labeler`, the
    task's simulated one, or under `collect.labeler: human` by people: `human_rankings.human_comparisons`, which
    raises `RankingsPending` until enough are ranked, or waits with `wait`), tag the rows with the round and the
    policies, append the seed rankings and write them all to `plan.out`."""
    t0 = time.time()
    source = rounds.source_tag(plan.policies)
    if cfg.collect.labeler == "human":
        ranked, summary = human_comparisons(cfg, plan.out, plan.round, lambda: batch_items(sample(cfg, plan), plan),
                                            wait=wait, label_flags=plan.label_flags)
    else:
        ranked, summary = sample_and_rank.rank_candidates(sample(cfg, plan), labeler), {"labeler": "simulated"}
    comparisons = rounds.tagged(ranked, plan.round, source)
    collected = len(comparisons)
    if plan.seed_comparisons is not None and plan.seed_comparisons.exists():
        comparisons += rounds.tagged(read_data(cfg, plan.seed_comparisons, Comparison), plan.round,
                                     rounds.SEED_SOURCE)
    write_records(plan.out, comparisons, Comparison)
    # The plan carries no run paths: its files are recorded absolute (nothing checks a collect summary's models,
    # which are its inputs; what it describes is `output`).
    return {"prompts": len(plan.prompts), "collected": collected, "source": source,
            "total": plan.earlier + len(comparisons),
            "mean_k": float(np.mean([len(c.responses) for c in comparisons])), **summary,
            "seconds": time.time() - t0, "output": str(plan.out.expanduser().resolve()),
            **provenance(None, inputs={**{f"policy_{name}": path for name, path in plan.policies.items()},
                                       "seed_comparisons": plan.seed_comparisons})}


def sample(cfg: RunConfig, plan: CollectPlan) -> list[sample_and_rank.Candidates]:
    """The sample step: the plan's prompts' candidates, drawn with the round's seed."""
    return sample_and_rank.sample_candidates(cfg, plan.policies, plan.prompts, plan.temperatures,
                                             cfg.seed + plan.round, samples=plan.samples)


def batch_items(candidates: list[sample_and_rank.Candidates], plan: CollectPlan) -> list[BatchItem]:
    """Candidates as the labeling batch holds them, tagged as their comparisons will be."""
    source = rounds.source_tag(plan.policies)
    return [BatchItem(item_id=c.prompt.prompt_id, prompt_id=c.prompt.prompt_id, prompt=c.prompt.prompt,
                      messages=c.prompt.messages, responses=list(c.responses), response_sources=list(c.sources),
                      round=plan.round, source=source) for c in candidates]

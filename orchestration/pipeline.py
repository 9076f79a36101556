"""`raylhf run`: the whole pipeline on the configured task, each stage skipped when its output exists."""

from __future__ import annotations

import logging
from typing import Callable

from raylhf.configs.schema import RunConfig
from raylhf.learners.models import is_checkpoint
from raylhf.orchestration import stages
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.ppo_checkpoint import PPOCheckpoint
from raylhf.orchestration.ppo_stage import finish_ppo, run_ppo
from raylhf.orchestration.report import write_report
from raylhf.tasks import load_task

log = logging.getLogger(__name__)


def run_pipeline(cfg: RunConfig, paths: RunPaths, report: Callable[[str, dict], None]) -> dict[str, dict]:
    task = load_task(cfg.task)
    summaries: dict[str, dict] = {}

    def stage(name: str, done: bool, fn: Callable[[], dict]) -> None:
        if done and stages.load_summary(paths, name) is not None:  # output and its summary both exist
            log.info("stage %s: output exists, skipped", name)
            summaries[name] = stages.load_summary(paths, name)
            return
        summaries[name] = stages.save_summary(paths, name, fn())
        report(name, summaries[name])

    stage("data", paths.demonstrations.exists(), lambda: stages.stage_data(cfg, task, paths.data))
    stage("pretrain", is_checkpoint(paths.model("base")), lambda: stages.stage_pretrain(cfg, paths, task))
    stage("sft", is_checkpoint(paths.model("sft")),
          lambda: stages.stage_sft(cfg, paths, paths.model("base"), paths.demonstrations, paths.model("sft")))
    policies = {p: stages.resolve_policy(paths, p) for p in cfg.collect.policies}
    seed = paths.data / "demo_comparisons.jsonl" if cfg.collect.include_seed_comparisons else None
    stage("collect", paths.comparisons.exists(),
          lambda: stages.stage_collect(cfg, paths, policies, paths.prompts("train"), paths.comparisons,
                                       cfg.collect.n_prompts, cfg.collect.labeler_seed, seed))
    stage("rm", is_checkpoint(paths.model("rm")),
          lambda: stages.stage_rm(cfg, paths, paths.model("sft"), paths.comparisons, paths.model("rm"),
                                  paths.demonstrations))
    stage("rm_eval", stages.load_summary(paths, "rm_eval") is not None,
          lambda: stages.stage_rm_eval(cfg, paths, paths.model("sft"), paths.model("rm")))
    stage("ppo", is_checkpoint(paths.model("ppo")),
          lambda: _ppo(cfg, paths))
    stage("eval", False, lambda: stages.stage_eval(cfg, paths, stages.eval_policies(paths, None), paths.model("rm")))
    write_report(paths, summaries)
    return summaries


def _ppo(cfg: RunConfig, paths: RunPaths) -> dict:
    """An interrupted PPO stage continues from its newest checkpoint; one that stopped after its last
    checkpoint, before writing its summary, finishes without training again."""
    step = PPOCheckpoint(paths.root).step()
    if step is not None and step >= cfg.ppo.total_steps:
        return finish_ppo(paths, paths.model("ppo"))
    return run_ppo(cfg, paths, paths.model("sft"), paths.model("rm"), paths.model("ppo"), resume=step is not None)

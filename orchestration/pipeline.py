"""`raylhf run` and `raylhf iterate`: the whole pipeline on the configured task, round 0 and the iteration
rounds after it, each stage skipped when its output exists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from raylhf.configs.schema import RunConfig
from raylhf.contracts.protocols import Labeler
from raylhf.contracts.records import Comparison
from raylhf.learners.models import is_checkpoint
from raylhf.orchestration import collect_stage, eval_stages, judge, rounds, stages
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.ppo_checkpoint import PPOCheckpoint
from raylhf.orchestration.ppo_stage import finish_ppo, run_ppo
from raylhf.orchestration.provenance import check_summary
from raylhf.orchestration.report import write_report
from raylhf.tasks import load_task

log = logging.getLogger(__name__)


class Stages:
    """Runs the stages of a run, or of one iteration round, in order: a stage whose output and summary both
    exist is skipped (a finished stage is never redone); any other runs, and its summary is saved."""

    def __init__(self, paths: RunPaths, report: Callable[[str, dict], None], label: str = ""):
        self.paths, self.report, self.label = paths, report, label
        self.summaries: dict[str, dict] = {}

    def __call__(self, name: str, done: bool, fn: Callable[[], dict], provided: Path | None = None) -> None:
        """Run stage `name` unless it is `done`; `provided` is your file or model standing in for its output
        (`RunPaths.provided`), which is used as it is and never produced or written."""
        if provided is not None:
            log.info("%sstage %s: your %s is used as it is", self.label, name, provided)
            self.summaries[name] = {"provided": str(provided)}
            return
        summary = stages.load_summary(self.paths, name)
        if done and summary is not None:
            # Built on and reported only while it describes the model in place (not one replaced by hand).
            check_summary(self.paths, name, summary)
            log.info("%sstage %s: output exists, skipped", self.label, name)
            self.summaries[name] = summary
            return
        self.summaries[name] = stages.save_summary(self.paths, name, fn())
        self.paths.sync()
        self.report(self.label + name, self.summaries[name])

    def evaluated(self, after: str = "ppo") -> bool:
        """Whether the evaluation is newer than stage `after`'s summary: a redone PPO stage is evaluated again."""
        ev, upstream = self.paths.stage_summary("eval"), self.paths.stage_summary(after)
        return ev.exists() and upstream.exists() and ev.stat().st_mtime >= upstream.stat().st_mtime


def run_pipeline(cfg: RunConfig, paths: RunPaths, report: Callable[[str, dict], None],
                 labeler: Labeler | None = None, wait: bool = False) -> dict[str, dict]:
    """Round 0 (data -> base model -> SFT -> comparisons on the SFT policy -> reward model -> PPO-ptx ->
    evaluation), then `iterate.rounds` iteration rounds, then `report.md`. `labeler` ranks every round's
    comparisons, round 0's included (default: the task's simulated labeler of `collect.labeler_seed`); under
    `collect.labeler: human` people do, and a round whose rankings are not in yet stops the run with
    `RankingsPending` (or, with `wait`, waits for them): run it again once they are.

    A run without a task starts from your model and files: no data, pretraining, collect or rm_eval stage.
    When the evaluation's judge is the held-out reward model (`eval.judge`: `rm`, or `auto` without a task),
    stage `judge_rm` trains it on `eval.judge_share` of the comparisons before the reward model, which then
    trains on the rest (`raylhf.orchestration.judge`)."""
    task = load_task(cfg.task)
    if labeler is None and task is not None:
        labeler = task.labeler(cfg.collect.labeler_seed)
    # Comparisons are yours, or a labeler collects them; a run with neither uses your reward model as it is.
    has_comparisons = paths.provided("comparisons") is not None or labeler is not None
    judge_kind = judge.check_judge(cfg, paths, task, has_comparisons)  # before any stage: a bad judge costs no run
    # The run's reward models never see the held-out judge's prompts.
    keep = judge.rm_keeps(cfg, task) if judge_kind == "rm" else None
    stage = Stages(paths, report)

    if task is not None:
        stage("data", (paths.data / "demonstrations.jsonl").exists(), lambda: stages.stage_data(cfg, task, paths.data))
    stage("pretrain", is_checkpoint(paths.model("base")), lambda: stages.stage_pretrain(cfg, paths, task),
          provided=paths.provided("model_base") or placed_base_model(paths))
    stage("sft", is_checkpoint(paths.model("sft")),
          lambda: stages.stage_sft(cfg, paths, paths.model("base"), paths.demonstrations, paths.model("sft")))
    seed = paths.seed_comparisons if cfg.collect.include_seed_comparisons and task is not None else None
    if has_comparisons:
        stage("collect", paths.comparisons.exists(),
              lambda: collect_stage.stage_collect(cfg, collect_stage.first_round_plan(
                  cfg, {p: stages.resolve_policy(paths, p) for p in cfg.collect.policies}, paths.prompts("train"),
                  paths.comparisons, seed), labeler, wait),
              provided=paths.provided("comparisons"))
    if judge_kind == "rm":
        stage(judge.JUDGE_RM, is_checkpoint(paths.model(judge.JUDGE_RM)), lambda: judge.stage_judge_rm(cfg, paths))
    stage("rm", is_checkpoint(paths.model("rm")),
          lambda: stages.stage_rm(cfg, paths, paths.model("sft"), paths.comparisons, paths.model("rm"),
                                  paths.demonstrations, keep=keep, keep_key="eval.judge_share"),
          provided=paths.provided("model_rm"))
    if task is not None:  # judged against the task's labeler and utility
        stage("rm_eval", stages.load_summary(paths, "rm_eval") is not None,
              lambda: eval_stages.stage_rm_eval(cfg, paths, paths.model("sft"), paths.model("rm")))
    stage("ppo", is_checkpoint(paths.model("ppo")),
          lambda: ppo_resuming(cfg, paths, paths.model("sft"), paths.model("rm")))
    stage("eval", stage.evaluated(),
          lambda: eval_stages.stage_eval(cfg, paths, eval_stages.eval_policies(paths, None), paths.model("rm")))
    iterations = {r: run_round(cfg, paths, r, labeler, report, keep, wait) for r in range(1, cfg.iterate.rounds + 1)}
    write_report(paths, stage.summaries, iterations)
    return stage.summaries


def placed_base_model(paths: RunPaths) -> Path | None:
    """A base model you put in `<run>/models/base` yourself (a checkpoint the pretrain stage did not write: it
    has no summary): used as it is, never pretrained over."""
    base = paths.model("base")
    return base if is_checkpoint(base) and stages.load_summary(paths, "pretrain") is None else None


def run_round(cfg: RunConfig, paths: RunPaths, r: int, labeler: Labeler,
              report: Callable[[str, dict], None], keep: Callable[[Comparison], bool] | None = None,
              wait: bool = False) -> dict[str, dict]:
    """Iteration round `r` >= 1 (InstructGPT step 4), in `<run>/rounds/<r>/`: rank samples of the current policy
    on fresh prompts -> retrain the reward model on every comparison so far (those `keep` accepts: not the
    held-out judge's) -> evaluate it -> continue PPO-ptx from the current policy against it, the KL penalty still
    to SFT -> evaluate the policy against SFT and the previous round's. Each stage the round finished before an
    interruption is skipped."""
    here, sft = paths.round(r), paths.model("sft")
    current = (rounds.policy_name(r - 1), rounds.policy_path(paths, r - 1))
    new_policy = (rounds.policy_name(r), here.model("ppo"))
    stage = Stages(here, report, label=f"round {r} ")

    stage("collect", here.comparisons.exists(),
          lambda: collect_stage.stage_collect(cfg, collect_stage.iteration_round_plan(cfg, paths, r), labeler, wait))
    stage("rm", is_checkpoint(here.model("rm")),
          lambda: stages.stage_rm(cfg, here, sft, rounds.comparison_files(paths, r), here.model("rm"),
                                  paths.demonstrations, init=rounds.rm_init_path(cfg, paths, r), keep=keep,
                                  keep_key="eval.judge_share"))
    stage("rm_eval", stages.load_summary(here, "rm_eval") is not None,
          lambda: eval_stages.stage_rm_eval(cfg, here, sft, here.model("rm"), current=current,
                                            previous_rm=paths.round(r - 1).model("rm")))
    stage("ppo", is_checkpoint(here.model("ppo")),
          lambda: ppo_resuming(rounds.ppo_config(cfg, r), here, current[1], here.model("rm"), ref_path=sft,
                               value_path=rounds.value_init_path(cfg, paths, r)))
    stage("eval", stage.evaluated(),
          lambda: eval_stages.stage_eval(cfg, here, dict([("sft", sft), current, new_policy]), here.model("rm")))
    return stage.summaries


def ppo_resuming(cfg: RunConfig, paths: RunPaths, policy_path: Path, rm_path: Path, ref_path: Path | None = None,
                 value_path: Path | None = None) -> dict:
    """The PPO stage of a run or round into `paths.model("ppo")`. An interrupted one continues from its newest
    checkpoint; one that stopped after its last checkpoint, before writing its summary, finishes without
    training again."""
    step = PPOCheckpoint(paths.root).step()
    if step is not None and step >= cfg.ppo.total_steps:
        summary = finish_ppo(paths, paths.model("ppo"))
    else:
        summary = run_ppo(cfg, paths, policy_path, rm_path, paths.model("ppo"), resume=step is not None,
                          ref_path=ref_path, value_path=value_path)
    reference = cfg.reward.ref_path or ref_path or policy_path  # as the scorers resolve it
    return {**summary, "policy_init": str(policy_path), "kl_reference": str(reference),
            "value_init": str(value_path or rm_path), "reward_model": str(rm_path)}

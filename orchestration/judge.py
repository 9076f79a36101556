"""Who judges the win rates of the evaluation (`eval.judge`), and the held-out judge reward model.

- `labeler`: the task's simulated labeler of `eval.labeler_seed`.
- `rm`: a second reward model, `models/judge_rm` (stage `judge_rm`), trained on a disjoint share
  (`eval.judge_share`) of round 0's comparisons, picked by a stable hash of the prompt id; every reward model
  of the run itself trains without those prompts (`rm_keeps`), so the judge's preferences are not the ones
  PPO was optimised against (judging a policy with the reward model it maximised only measures how well it
  maximised it). `RewardModelJudge` puts it behind the `Labeler` protocol.
- `package.module:factory`: a pairwise ranker, `factory(eval.labeler_seed)` returning a `Labeler`.
- `auto`: the task's labeler, or the held-out reward model for a run without a task.

`judge_win_rates` is the one way the evaluation turns a judge into win rates.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.protocols import Labeler, Task
from raylhf.contracts.records import Comparison, Prompt
from raylhf.learners.models import is_checkpoint
from raylhf.learners.reward_model import load_reward_model, score_sequences
from raylhf.orchestration.evaluation import win_rate
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import load_format
from raylhf.orchestration.stages import load_summary, setup_torch, stage_rm
from raylhf.reward_service.errors import RewardConfigError
from raylhf.reward_service.programmatic import load_reward_function

log = logging.getLogger(__name__)

JUDGE_RM = "judge_rm"  # the stage that trains the held-out judge reward model, and its model's name
KEY = "eval.judge"


def judge_kind(cfg: RunConfig, task: Task | None) -> str:
    """`labeler`, `rm` or a ranker's import path: `eval.judge` with `auto` resolved."""
    if cfg.eval.judge != "auto":
        return cfg.eval.judge
    return "labeler" if task is not None else "rm"


# ---------------------------------------------------------------------------------------------- the split
def held_for_judge(prompt_id: str, share: float) -> bool:
    """Whether prompt `prompt_id` belongs to the judge's share. A hash of the id, not a random draw: reruns,
    resumed runs and every process pick the same prompts (Python's `hash` is salted per process)."""
    digest = hashlib.sha256(f"raylhf-judge:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def judge_holds(share: float) -> Callable[[Comparison], bool]:
    """The judge's comparisons: round 0's rows whose prompt is in its share. Later rounds rank fresh prompts,
    so their rows are never the judge's."""
    return lambda c: c.round == 0 and held_for_judge(c.prompt_id, share)


def rm_keeps(cfg: RunConfig, task: Task | None) -> Callable[[Comparison], bool] | None:
    """The filter the run's reward models train under: everything but the judge's comparisons when the judge is
    the held-out reward model; None (everything) otherwise."""
    if judge_kind(cfg, task) != "rm":
        return None
    holds = judge_holds(cfg.eval.judge_share)
    return lambda c: not holds(c)


def stage_judge_rm(cfg: RunConfig, paths: RunPaths) -> dict[str, Any]:
    """Train the held-out judge reward model on the judge's share of round 0's comparisons (from SFT, normalised
    on the demonstrations like the run's own) into `models/judge_rm`."""
    summary = stage_rm(cfg, paths, paths.model("sft"), paths.comparisons, paths.model(JUDGE_RM),
                       paths.demonstrations, keep=judge_holds(cfg.eval.judge_share), keep_key="eval.judge_share",
                       log_as=JUDGE_RM)
    return {**summary, "judge_share": cfg.eval.judge_share}


def check_judge(cfg: RunConfig, paths: RunPaths, task: Task | None, has_comparisons: bool) -> str | None:
    """The judge kind of a run (`judge_kind`), checked before its first stage: a ranker's module imports, and
    the held-out reward model has comparisons to train on (`has_comparisons`: yours, or collected by a labeler).
    None under `auto` when there are none: the run is then judged without win rates."""
    kind = judge_kind(cfg, task)
    if kind not in ("labeler", "rm"):
        _factory(kind)
    elif kind == "rm" and not has_comparisons:
        if cfg.eval.judge == "auto":
            log.warning("%s: no comparisons to train a held-out judge reward model on (data.comparisons is not "
                        "set): the evaluation has no win rates", KEY)
            return None
        raise ConfigError(f"{KEY}: 'rm' trains a held-out judge reward model on a share of data.comparisons, which "
                          "is not set; set it, or name a ranker by import path")
    if kind == "rm" and paths.provided("model_rm") is not None:
        log.warning("%s: your reward model (reward.rm_path) was not trained here: it may have seen the prompts the "
                    "held-out judge is trained on", KEY)
    elif kind == "rm" and "comparisons_left_out" not in (load_summary(paths, "rm") or {"comparisons_left_out": 0}):
        # A finished stage is never redone: a reward model trained before the judge was chosen keeps its data.
        log.warning("%s: the run's reward model was trained on every comparison, the judge's prompts included; "
                    "delete %s to train it without them", KEY, paths.model("rm"))
    return kind


# ---------------------------------------------------------------------------------------------- judges
class RewardModelJudge:
    """A `Labeler` backed by a reward model: the higher-scored response wins (a tie is 0.5).

    Prompts may be text or records (`Prompt`, `Comparison`): a record keeps its whole conversation, which text
    passed through the protocol's `prefer(prompt, a, b)` cannot (it becomes one user turn)."""

    def __init__(self, rm: torch.nn.Module, fmt: PromptFormat, device: torch.device):
        self.rm, self.fmt, self.device = rm, fmt, device

    @classmethod
    def load(cls, cfg: RunConfig, path: Path, key: str = KEY) -> RewardModelJudge:
        device, _ = setup_torch(cfg)
        rm = load_reward_model(path, cfg.device, cfg.trust_remote_code, key=key)
        return cls(rm, load_format(cfg, path, key=key), device)

    def _record(self, prompt: Any) -> Any:
        return Prompt("", prompt) if isinstance(prompt, str) else prompt

    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        """The reward of each response to its prompt (float64 [N])."""
        seqs = [self.fmt.prompt_ids(self._record(p)) + self.fmt.response_ids(r) for p, r in zip(prompts, responses)]
        return score_sequences(self.rm, seqs, self.fmt.tokenizer.pad_token_id, self.device)

    def rank(self, prompt: Any, responses: Sequence[str]) -> list[int]:
        scores = self.scores([prompt] * len(responses), responses)
        return [int(i) for i in np.argsort(-scores, kind="stable")]  # best first; a tie keeps the given order

    def prefer(self, prompt: Any, a: str, b: str) -> float:
        sa, sb = self.scores([prompt, prompt], [a, b])
        return preference(a, b, sa, sb)


def preference(a: str, b: str, score_a: float, score_b: float) -> float:
    """1.0 if response a scored higher, 0.0 if b did, 0.5 for a tie (the `Labeler.prefer` convention). The same
    text is a tie whatever its two scores: a sequence's reward varies in the last bits with what it is batched
    with, and that must not decide between a policy and SFT giving one answer."""
    if a == b:
        return 0.5
    return 1.0 if score_a > score_b else 0.0 if score_a < score_b else 0.5


def _factory(path: str) -> Callable[[int], Any]:
    try:
        return load_reward_function(path, KEY)
    except RewardConfigError as e:
        # The resolver names `<key>.path`; here the import path is the key's whole value.
        raise ConfigError(f"{KEY}: {str(e).split(': ', 1)[-1]}") from e


def load_ranker(path: str, seed: int) -> Labeler:
    """The pairwise ranker `package.module:factory`, built as `factory(seed)`; a ConfigError naming
    `eval.judge` when it does not import or does not give a `Labeler` (`rank` and `prefer`)."""
    ranker = _factory(path)(seed)
    if not isinstance(ranker, Labeler):
        raise ConfigError(f"{KEY}: {path}({seed}) returned a {type(ranker).__name__}, which lacks the Labeler "
                          "methods rank(prompt, responses) and prefer(prompt, a, b)")
    return ranker


def load_judge(cfg: RunConfig, paths: RunPaths, task: Task | None) -> tuple[Labeler | None, str | None]:
    """The evaluation's judge and how the summary names it (`labeler`, `rm:<path>`, the import path), or
    (None, None) under `auto` when the held-out reward model was never trained (no comparisons to train it)."""
    kind = judge_kind(cfg, task)
    if kind == "labeler":
        if task is None:
            raise ConfigError(f"{KEY}: 'labeler' needs a task (task.name is none); use rm, auto or an import path")
        return task.labeler(cfg.eval.labeler_seed), "labeler"
    if kind != "rm":
        return load_ranker(kind, cfg.eval.labeler_seed), kind
    path = paths.round(0).model(JUDGE_RM)  # a round is judged by the run's one judge
    if not is_checkpoint(path):
        if cfg.eval.judge == "rm":
            raise ConfigError(f"{KEY}: 'rm', but there is no held-out judge reward model at {path}; `raylhf run` "
                              "trains it (stage judge_rm) from data.comparisons")
        log.warning("%s: no held-out judge reward model at %s: win rates are left out", KEY, path)
        return None, None
    return RewardModelJudge.load(cfg, path), f"rm:{path}"


def judge_win_rates(judge: Labeler, prompts: Sequence[Prompt], responses: dict[str, Sequence[str]]
                    ) -> dict[str, float]:
    """`<a>_vs_<b>`: how often the judge prefers policy a's response over b's (ties half), for every pair, each
    later policy against every earlier one. A reward-model judge scores each policy's responses once, with
    their prompts' whole conversations."""
    names = list(responses)
    if isinstance(judge, RewardModelJudge):
        scores = {n: judge.scores(prompts, responses[n]) for n in names}

        def rate(a: str, b: str) -> float:
            prefs = [preference(ra, rb, sa, sb)
                     for ra, rb, sa, sb in zip(responses[a], responses[b], scores[a], scores[b])]
            return float(np.mean(prefs)) if prefs else float("nan")
    else:
        def rate(a: str, b: str) -> float:
            return win_rate(judge, prompts, responses[a], responses[b])
    return {f"{a}_vs_{b}": rate(a, b) for i, a in enumerate(names) for b in names[:i]}

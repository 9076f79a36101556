"""The training and judging stages of the pipeline around PPO: pretraining (`pretrain`), supervised
fine-tuning (`sft`), the reward model (`rm`), collecting rankings (`collect`) and human ranking (`label`),
evaluation (`eval`) and the rounds of iterated RLHF (`iterate`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from raylhf.configs.sections.base import Section

# `package.module:factory` (a dotted attribute after the colon is allowed), as `eval.judge` names a ranker.
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class PretrainConfig(Section):
    steps: int = Field(1000, ge=1)
    """Optimizer steps of base-model pretraining on the task's corpus (the demo's held-out loss is within
    0.02 nats of its 1,500-step value by then, at two thirds of the time)."""
    batch_size: int = Field(32, ge=1)
    """Sequences per step."""
    seq_len: int = Field(128, ge=8)
    """Tokens per training sequence (documents are packed)."""
    lr: float = Field(3e-3, gt=0.0)
    """Peak learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up steps."""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay."""


class SFTConfig(Section):
    epochs: int = Field(4, ge=1)
    """Passes over the demonstrations (InstructGPT: 16; the tiny demo overfits beyond a few)."""
    batch_size: int = Field(32, ge=1)
    """Demonstrations per step."""
    lr: float = Field(1e-3, gt=0.0)
    """Peak learning rate, cosine decay to 10 % of it."""
    residual_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on attention and residual paths during SFT (InstructGPT: 0.2)."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Max global gradient norm."""
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    """Fraction of demonstrations held out for validation loss and best-checkpoint selection."""


class RMConfig(Section):
    epochs: int = Field(1, ge=1)
    """Passes over the comparisons (InstructGPT: 1; more overfits)."""
    batch_prompts: int = Field(16, ge=1)
    """Prompts per step; each carries its K responses and all C(K,2) pairs."""
    lr: float = Field(3e-4, gt=0.0)
    """Peak learning rate, cosine decay."""
    head_lr_scale: float = Field(1.0, gt=0.0)
    """The reward head's learning rate as a multiple of `lr` (it starts at zero, the trunk from SFT)."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Max global gradient norm."""
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Fraction of comparisons held out for pairwise accuracy."""


class CollectConfig(Section):
    k: int = Field(8, ge=2, le=9)
    """Responses ranked per prompt (InstructGPT: 4..9)."""
    n_prompts: int = Field(2000, ge=1)
    """Training prompts to collect rankings for (the first ones of the split; iteration rounds rank later ones).
    On the demo the RM's held-out accuracy moves by at most 0.02 from 375 to 3,000 prompts
    (`benchmarks/bench_rm_curves.py`)."""
    temperatures: list[float] = [0.7, 1.0, 1.4]
    """Sampling temperatures; responses of one prompt are spread over them for variety."""
    policies: list[str] = ["sft"]
    """Policies to sample from in `raylhf run`: stage names of the run (base, sft, ppo) or checkpoint paths.
    Responses of one prompt are spread over policies x temperatures (varied comparisons train a better RM)."""
    include_seed_comparisons: bool = True
    """Add the task's rankings of labeler-written responses (data/demo_comparisons.jsonl) to the RM data."""
    labeler_seed: int = 0
    """Seed of the (simulated) labeler who ranks the collected responses."""
    labeler: Literal["simulated", "human"] = "simulated"
    """Who ranks the collected responses, in round 0 (`raylhf run`), every iteration round and `raylhf collect`:
    `simulated`, the task's labeler (seed `labeler_seed`); `human`, people in `raylhf label` (see `label.*`):
    the round's samples are written as a batch beside its comparisons file (`<stem>.labeling/`), and the
    round goes on once enough of them are ranked (`label.min_rankings`); until then the command exits with
    status 5 (or waits, with `--wait`). Win rates are judged by `eval.judge` either way."""


class EvalConfig(Section):
    n_prompts: int = Field(300, ge=1)
    """Held-out prompts per split used to judge policies."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature of evaluated policies (1.0: the distribution PPO optimises)."""
    labeler_seed: int = 1000
    """Seed of the labeler who judges win rates; different from the collection labeler, as the paper held out
    labelers whose data was never trained on."""
    rm_eval_prompts: int = Field(200, ge=1)
    """Held-out prompts per split on which the reward model's pairwise accuracy is measured."""
    judge: str = "auto"
    """Who judges win rates: `labeler` (the task's, seed `labeler_seed`), `rm` (a held-out reward model trained
    on a disjoint `judge_share` of the comparisons, which the run's reward model never sees), or a pairwise
    ranker by import path `package.module:factory` (a `Labeler`, built with the seed). `auto`: the task's
    labeler, or the held-out reward model when the task has none."""
    judge_share: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of the comparisons (by prompt) that train the held-out judge reward model under `judge: rm`."""

    @field_validator("judge")
    @classmethod
    def _judge(cls, v: str) -> str:
        # The form is checked here; whether the module imports is checked before a run starts (it may need the
        # run's environment).
        if v not in ("auto", "labeler", "rm") and not _IMPORT_PATH.fullmatch(v):
            raise ValueError(f"{v!r} is none of auto, labeler, rm or an import path 'package.module:factory'")
        return v


class IterateConfig(Section):
    rounds: int = Field(1, ge=0)
    """Rounds of iterated RLHF (InstructGPT step 4) after the first reward model and PPO stage, in `raylhf run`
    and `raylhf iterate`: each ranks samples of the current policy on fresh prompts, retrains the reward model
    on every comparison so far and continues PPO-ptx from the current policy against it; 0: none."""
    n_prompts: int = Field(1000, ge=1)
    """Fresh training prompts ranked per round: prompts no earlier round collected rankings on (the first
    round used `collect.n_prompts`); a run with rounds needs `collect.n_prompts + rounds x n_prompts <=
    task.n_train_prompts` (checked before it starts)."""
    policies: list[str] = ["current"]
    """Policies a round samples its K responses per prompt from: `current` (the policy the round continues),
    `sft`, `base`, `roundN` (the policy after round N; `round0` is the first PPO policy) or a checkpoint path.
    Responses of one prompt are spread over policies x `temperatures`."""
    temperatures: list[float] = [0.7, 1.0, 1.4]
    """Sampling temperatures of a round's comparisons (as `collect.temperatures`)."""
    samples_per_prompt: int = Field(24, ge=2)
    """Samples drawn per prompt in a round (spread over policies x temperatures), of which up to `collect.k`
    distinct ones are ranked: an aligned policy repeats its answers, so K samples give fewer than K distinct."""
    rm_init: Literal["sft", "previous"] = "sft"
    """Where a round's reward model starts: `sft`, a fresh scalar head on the SFT model (as the first reward
    model), or `previous`, the previous round's reward model (warm start). Either way it trains on all
    comparisons so far and is normalised on the demonstrations."""
    value_init: Literal["rm", "previous"] = "rm"
    """A round's PPO value function: `rm`, re-initialised from the round's new reward model (as in the first
    PPO stage), or `previous`, carried over from the previous round's PPO."""
    ppo_steps: int = Field(50, ge=1)
    """Learner steps of each round's PPO-ptx (the first PPO stage runs `ppo.total_steps`). The policy continues
    from the current one; the KL penalty stays against the SFT policy."""

    @field_validator("policies", "temperatures")
    @classmethod
    def _not_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("needs at least one entry")
        return v

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, v: list[float]) -> list[float]:
        if any(t < 0 for t in v):
            raise ValueError(f"temperatures must be >= 0, got {v}")
        return v


# InstructGPT's Table 3: what its labelers recorded about each response beside the ranking.
TABLE3_METADATA = [
    "fails_to_follow_instruction", "inappropriate_for_customer_assistant", "hallucination", "satisfies_constraint",
    "sexual_content", "violent_content", "encourages_violence_abuse_self_harm", "denigrates_protected_class",
    "harmful_advice", "expresses_opinion", "expresses_moral_judgement",
]


class LabelConfig(Section):
    labelers: str | None = None
    """File (YAML or JSON) mapping each labeler id to their access token; unset: one labeler `local`, whose
    random token is printed in the URL `raylhf label` serves."""
    overlap: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the items that go to a second labeler as well (measures agreement; needs >= 2 labelers)."""
    min_rankings: int | None = Field(None, ge=1)
    """Items that need a ranking before the round goes on; None: every assigned item ranked, skipped or
    flagged."""
    host: str = "127.0.0.1"
    """Address `raylhf label` binds (local only unless set)."""
    port: int = Field(8470, ge=0, le=65535)
    """Port `raylhf label` listens on (0: any free port)."""
    metadata: list[str] = TABLE3_METADATA
    """Yes/no fields a labeler marks per response (InstructGPT Table 3)."""
    flags: list[str] = ["bad_prompt", "personal_data"]
    """Reasons a labeler can flag an item for instead of ranking it."""
    max_body_bytes: int = Field(65536, ge=1024)
    """Largest request body the labeling server accepts."""
    poll_s: float = Field(5.0, gt=0.0)
    """Seconds between checks for new rankings under `--wait`."""

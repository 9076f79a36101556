"""What a run starts from: the task's world (`task`), the rules for dataset rows (`data`) and the demo base
model's architecture (`model`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylhf.configs.sections.base import Section


class TaskConfig(Section):
    name: str = "demo"
    """Task module under `tasks/` that supplies prompts, demonstrations, pretraining text and the labeler."""
    seed: int = 0
    """Seed of the task's world: every dataset it writes is a function of this seed."""
    n_train_prompts: int = Field(4000, ge=1)
    """Prompts in the training split (SFT demonstrations, comparisons and RL prompts are drawn from it)."""
    n_heldout_prompts: int = Field(300, ge=1)
    """Held-out prompts of the training distribution (the headline evaluation split)."""
    n_generalization_prompts: int = Field(300, ge=1)
    """Prompts with unseen words or a held-out family (reported separately)."""
    n_pretrain_docs: int = Field(20000, ge=1)
    """Documents in the pretraining corpus (a further 5 % is written as a held-out split)."""
    ramble_rate: float = Field(0.25, ge=0.0, le=1.0)
    """Fraction of demonstrations that ramble on after the answer, as a base model continues text."""
    verbose_rate: float = Field(0.10, ge=0.0, le=1.0)
    """Fraction of demonstrations that wrap the answer in needless words."""
    wrong_rate: float = Field(0.05, ge=0.0, le=1.0)
    """Fraction of demonstrations with a wrong answer."""
    labeler_noise: float = Field(0.23, ge=0.0)
    """Std of the Gaussian noise the simulated labeler adds to the hidden utility of each response;
    0.23 makes two labelers agree on ~73 % of the demo's fixed reference pairs of SFT-quality responses
    (InstructGPT: 72.6 ± 1.5 %). Recalibrate with `raylhf.tasks.demo.calibrate_labeler_noise` if the world changes."""
    heldout_share: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each family's prompt texts (picked by a stable hash of the text) reserved for the held-out
    split, so held-out prompts are never trained on."""
    generalization_family: Literal[
        "list", "repeat", "upper", "count", "reverse", "add", "starts_with", "count_down"
    ] = "count_down"
    """Instruction family kept out of training prompts and demonstrations; its prompts are in the
    generalization split only (the pretraining corpus still shows the skill)."""
    generalization_category: Literal[
        "fruit", "animal", "color", "vehicle", "drink", "flower", "instrument", "tool"
    ] = "tool"
    """Item category whose words never appear in training prompts or demonstrations; generalization prompts
    ask about it or use its words (the pretraining corpus still contains them)."""

    @model_validator(mode="after")
    def _flaw_rates_are_shares(self) -> "TaskConfig":
        if self.ramble_rate + self.verbose_rate + self.wrong_rate > 1.0:
            raise ValueError("ramble_rate + verbose_rate + wrong_rate must be <= 1 (they are shares of the "
                             f"demonstrations; got {self.ramble_rate} + {self.verbose_rate} + {self.wrong_rate})")
        return self


class DataConfig(Section):
    on_bad_rows: Literal["error", "skip"] = "error"
    """What a bad dataset row does: `error` stops with file, line and reason; `skip` counts, logs and drops it."""
    max_prompt_chars: int = Field(1024, ge=1)
    """Prompts longer than this many characters are bad rows."""


class ModelConfig(Section):
    preset: Literal["tiny", "small"] = "tiny"
    """Architecture of the demo base model: `tiny` (~1M parameters) or `small` (~10M), Llama-style."""
    vocab_size: int = Field(1024, ge=260, le=65536)
    """Byte-level BPE vocabulary size of the demo tokenizer (special tokens included)."""
    max_position_embeddings: int = Field(256, ge=32)
    """Longest sequence (prompt + response) the model handles."""

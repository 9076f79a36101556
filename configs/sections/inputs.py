"""What a run starts from: the task's world (`task`), the datasets and the rules for their rows (`data`), and
the base model (`model`: a local Hugging Face checkpoint, or the demo's architecture to pretrain)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from raylhf.configs.sections.base import Section


class TaskConfig(Section):
    name: str = Field("demo", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    """What supplies prompts, demonstrations, pretraining text and judgement: `demo` (the built-in world), a
    module by import path (`mypackage.mytask`, whose `build(task_config)` returns a `Task`), or `none`: the
    run's data all come from `data.*` files and its model from `model.path`, and it is judged without ground
    truth (RM score, KL, a held-out reward model's win rate)."""
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


class SplitFiles(Section):
    train: str | None = None
    """The training split's file (.jsonl or .parquet)."""
    heldout: str | None = None
    """The held-out split's file (.jsonl or .parquet), for evaluation; never trained on."""


class ColumnsConfig(Section):
    """The names your files give the columns raylhf reads (each defaults to its own name)."""

    prompt_id: str | None = None
    """Column of the row id (a string or an integer; hashed from the prompt when the file has none)."""
    prompt: str | None = None
    """Column of the prompt: text, or a list of {role, content} messages."""
    response: str | None = None
    """Column of a demonstration's response (`response`, or `completion`)."""
    messages: str | None = None
    """Column of a whole conversation whose last turn is the assistant's response."""
    chosen: str | None = None
    """Column of a pairwise comparison's preferred response (text or messages)."""
    rejected: str | None = None
    """Column of a pairwise comparison's other response (text or messages)."""
    responses: str | None = None
    """Column of a K-wise comparison's K responses."""
    ranking: str | None = None
    """Column of a K-wise comparison's ranking (response indices, best first)."""
    text: str | None = None
    """Column of a pretraining document's text."""

    def mapping(self) -> dict[str, str]:
        """Canonical column name -> your column name, for the columns you renamed."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class DataConfig(Section):
    prompts: SplitFiles = SplitFiles()
    """Your prompts (PPO trains on `train`, evaluation uses `heldout`); unset: the task writes them."""
    demonstrations: str | None = None
    """Your demonstrations for SFT: prompt + response, or messages ending in the assistant's turn."""
    comparisons: str | None = None
    """Your ranked comparisons for the reward model: chosen/rejected pairs or K-wise responses + ranking. Set,
    the first round trains on them instead of collecting rankings."""
    pretraining: SplitFiles = SplitFiles()
    """Your pretraining text (one document per row, column `text`) for PPO-ptx's LM loss and held-out LM loss."""
    columns: ColumnsConfig = ColumnsConfig()
    chat_template: str = "auto"
    """How prompts are rendered: `auto` uses the tokenizer's chat template when it has one (prompts are rendered
    with the generation prompt, responses end with its end-of-turn token); `none` sends prompt text through
    `input_template`; or a Jinja file, which is also saved with the trained checkpoints."""
    input_template: str = "{prompt}"
    """The text a prompt becomes when no chat template applies, e.g. `Question: {prompt}\nAnswer:` for a base
    model."""
    @field_validator("input_template")
    @classmethod
    def _has_placeholder(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError(f"{v!r} has no {{prompt}} placeholder for the prompt text")
        return v

    on_bad_rows: Literal["error", "skip"] = "error"
    """What a bad dataset row does: `error` stops with file, line and reason; `skip` counts, logs and drops it."""
    max_prompt_chars: int = Field(1024, ge=1)
    """Prompts longer than this many characters are bad rows."""


class ModelConfig(Section):
    path: str | None = None
    """A local Hugging Face causal LM (any architecture transformers and vLLM load) to fine-tune; set,
    `raylhf run` starts SFT from it and skips pretraining. Unset: the demo base model is pretrained."""
    preset: Literal["tiny", "small"] = "tiny"
    """Architecture of the demo base model: `tiny` (~1M parameters) or `small` (~10M), Llama-style."""
    vocab_size: int = Field(1024, ge=260, le=65536)
    """Byte-level BPE vocabulary size of the demo tokenizer (special tokens included)."""
    max_position_embeddings: int = Field(256, ge=32)
    """Longest sequence (prompt + response) the model handles."""

"""Where a run keeps its files: `<output_dir>/<name>/`, and where it reads the inputs you gave it.

A dataset or model named in the config (`data.*`, `model.path`, `reward.rm_path`) is read from where it is
and never written: `RunPaths.inputs` maps the run's file (`prompts_train`, `demonstrations`, `model_base`,
...) to yours, and `provided(...)` tells a stage that its output is such an input, so it is not produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.configs.schema import RunConfig


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class RunPaths:
    root: Path
    sync: Callable[[], None] = field(default=_nothing, compare=False, repr=False)
    """Mirror the run to its storage URI (`raylhf.orchestration.storage`); called after each stage and PPO
    checkpoint. Nothing to do for a run kept at a path."""
    inputs: Mapping[str, Path] = field(default_factory=dict, compare=False)
    """Your files standing in for the run's: `prompts_<split>`, `corpus_<split>`, `demonstrations`,
    `comparisons`, `model_<stage>` -> path (see `inputs_of`)."""

    @classmethod
    def for_config(cls, root: Path, cfg: RunConfig, sync: Callable[[], None] = _nothing) -> RunPaths:
        return cls(Path(root), sync, inputs_of(cfg))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _input(self, key: str, default: Path) -> Path:
        return self.inputs.get(key, default)

    def provided(self, key: str) -> Path | None:
        """Your file for the run's `key` (e.g. `model_base`, `comparisons`), or None when the run makes it."""
        return self.inputs.get(key)

    def prompts(self, split: str) -> Path:
        return self._input(f"prompts_{split}", self.data / f"prompts_{split}.jsonl")

    def corpus(self, split: str) -> Path:
        return self._input(f"corpus_{split}", self.data / f"corpus_{split}.jsonl")

    @property
    def demonstrations(self) -> Path:
        return self._input("demonstrations", self.data / "demonstrations.jsonl")

    @property
    def comparisons(self) -> Path:
        return self._input("comparisons", self.data / "comparisons.jsonl")

    @property
    def seed_comparisons(self) -> Path:
        """The task's rankings of labeler-written responses (`collect.include_seed_comparisons`)."""
        return self.data / "demo_comparisons.jsonl"

    def model(self, stage: str) -> Path:
        """HF-format checkpoint of a stage: base, sft, rm, ppo."""
        return self._input(f"model_{stage}", self.root / "models" / stage)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def stage_summary(self, stage: str) -> Path:
        return self.root / "summaries" / f"{stage}.json"

    def round(self, r: int) -> RunPaths:
        """Round `r` of iterated RLHF: round 0 is the run itself, a later one a `RoundPaths`."""
        return self if r == 0 else RoundPaths(self.root / "rounds" / str(r), self.sync, self.inputs)


@dataclass(frozen=True)
class RoundPaths(RunPaths):
    """Round r >= 1 of an iterated run, `<run>/rounds/<r>/`: its own comparisons (`comparisons.jsonl`, the
    rows it collected), `models/{rm,ppo}`, `summaries/`, `metrics.jsonl` and PPO checkpoint; the prompts,
    demonstrations and corpus are the run's."""

    @property
    def run(self) -> RunPaths:
        return RunPaths(self.root.parent.parent, self.sync, self.inputs)

    @property
    def data(self) -> Path:
        return self.run.data

    @property
    def comparisons(self) -> Path:
        return self.root / "comparisons.jsonl"

    def model(self, stage: str) -> Path:
        """A round trains its own reward model and policy; `base` and `sft` are the run's."""
        return self.run.model(stage) if stage in ("base", "sft") else self.root / "models" / stage

    def round(self, r: int) -> RunPaths:
        return self.run.round(r)


def inputs_of(cfg: RunConfig) -> dict[str, Path]:
    """The run's files that the config points at your own: the `RunPaths.inputs` of a run."""
    d = cfg.data
    named = {"prompts_train": d.prompts.train, "prompts_heldout": d.prompts.heldout,
             "corpus_train": d.pretraining.train, "corpus_heldout": d.pretraining.heldout,
             "demonstrations": d.demonstrations, "comparisons": d.comparisons,
             "model_base": cfg.model.path, "model_rm": cfg.reward.rm_path}
    return {key: Path(value) for key, value in named.items() if value is not None}

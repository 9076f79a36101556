"""Where a run keeps its files: `<output_dir>/<name>/`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class RunPaths:
    root: Path
    sync: Callable[[], None] = field(default=_nothing, compare=False, repr=False)
    """Mirror the run to its storage URI (`raylhf.orchestration.storage`); called after each stage and PPO
    checkpoint. Nothing to do for a run kept at a path."""

    @property
    def data(self) -> Path:
        return self.root / "data"

    def prompts(self, split: str) -> Path:
        return self.data / f"prompts_{split}.jsonl"

    def corpus(self, split: str) -> Path:
        return self.data / f"corpus_{split}.jsonl"

    @property
    def demonstrations(self) -> Path:
        return self.data / "demonstrations.jsonl"

    @property
    def comparisons(self) -> Path:
        return self.data / "comparisons.jsonl"

    def model(self, stage: str) -> Path:
        """HF-format checkpoint of a stage: base, sft, rm, ppo."""
        return self.root / "models" / stage

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
        return self if r == 0 else RoundPaths(self.root / "rounds" / str(r), self.sync)


@dataclass(frozen=True)
class RoundPaths(RunPaths):
    """Round r >= 1 of an iterated run, `<run>/rounds/<r>/`: its own comparisons (`comparisons.jsonl`, the
    rows it collected), `models/{rm,ppo}`, `summaries/`, `metrics.jsonl` and PPO checkpoint; the prompts,
    demonstrations and corpus are the run's."""

    @property
    def run(self) -> RunPaths:
        return RunPaths(self.root.parent.parent, self.sync)

    @property
    def data(self) -> Path:
        return self.run.data

    @property
    def comparisons(self) -> Path:
        return self.root / "comparisons.jsonl"

    def round(self, r: int) -> RunPaths:
        return self.run.round(r)

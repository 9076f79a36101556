"""Where a run keeps its files: `<output_dir>/<name>/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

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

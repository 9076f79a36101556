"""Where a run keeps its files: `<output_dir>/<name>/`, and where it reads the inputs you gave it.

A dataset or model named in the config (`data.*`, `model.path`, `reward.rm_path`) is read from where it is
and never written: `RunPaths.inputs` maps the run's file (`prompts_train`, `demonstrations`, `model_base`,
...) to yours, and `provided(...)` tells a stage that its output is such an input, so it is not produced.

A command whose output is not the run's own (`raylhf rm --out elsewhere/rm`) keeps its records beside that
output, in `<output>.records/` (`records_for`, `SidePaths`), never in the run's summaries, metrics or
checkpoints: those describe the run's own models only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

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

    @property
    def run_root(self) -> Path:
        """The directory a summary's paths are recorded relative to (`raylhf.orchestration.provenance`): the
        run's, also for a round, so that a run copied elsewhere still finds its own models."""
        return self.root


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

    @property
    def run_root(self) -> Path:
        return self.run.root


RECORDS_SUFFIX = ".records"


@dataclass(frozen=True)
class SidePaths(RunPaths):
    """The records of a command whose output is not the run's own, `<output>.records/`: its `summaries/`,
    `metrics.jsonl`, `config.yaml`, `checkpoints/` (PPO) and `rejects.jsonl`. Everything it reads (the data,
    the run's models, your inputs) is `run`'s, so the command runs as it would in the run."""

    run: RunPaths | None = field(default=None, compare=False, repr=False)

    @property
    def data(self) -> Path:
        return self.run.data

    def model(self, stage: str) -> Path:
        return self.run.model(stage)

    def round(self, r: int) -> RunPaths:
        return self if r == 0 else self.run.round(r)


def records_for(paths: RunPaths, targets: Sequence[tuple[Path, Path | None]]) -> RunPaths:
    """Where a command keeps its summary, metrics and checkpoints. `targets` are what it writes or describes,
    each with the run's own counterpart (None: the run has none): `(--out, <run>/models/rm)` for `raylhf rm`,
    every scored model for `rm-eval` and `eval`. When each target is the run's own, the run's `paths`: the
    command redoes a stage of the run and replaces its records. Otherwise the first other target `T` gets
    `T.records/` beside it (a `SidePaths`), so the run's summaries and metrics never describe a model that
    is not the run's."""
    for target, own in targets:
        if own is None or not _same_path(target, own):
            target = Path(target)
            return SidePaths(target.parent / (target.name + RECORDS_SUFFIX), inputs=paths.inputs, run=paths)
    return paths


def _same_path(a: Path, b: Path) -> bool:
    # Resolved: `runs/demo/models/rm` and the same directory through a symlink or `..` are one output.
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def inputs_of(cfg: RunConfig) -> dict[str, Path]:
    """The run's files that the config points at your own: the `RunPaths.inputs` of a run."""
    d = cfg.data
    named = {"prompts_train": d.prompts.train, "prompts_heldout": d.prompts.heldout,
             "corpus_train": d.pretraining.train, "corpus_heldout": d.pretraining.heldout,
             "demonstrations": d.demonstrations, "comparisons": d.comparisons,
             "model_base": cfg.model.path, "model_rm": cfg.reward.rm_path}
    return {key: Path(value) for key, value in named.items() if value is not None}

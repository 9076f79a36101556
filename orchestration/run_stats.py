"""What the PPO loop measures and reports: `RunStats` (its figures, returned by `PPODriver.run`), `LoopState`
(a look at the running loop, for live metrics) and `StepObserver` (the per-step hook: progress bar, metrics log,
in-training evaluation, live metrics), with `StepObservers` to tell several."""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from raylhf.contracts.records import Rollout
from raylhf.contracts.supervision import Fault


class StepObserver(Protocol):
    """What the driver reports after each learner step (the stage's progress bar and metrics log)."""

    def on_rollouts(self, batch: list[Rollout]) -> None:
        """The batch the learner just trained on."""
        ...

    def on_step(self, step: int, metrics: dict[str, Any]) -> None: ...

    def on_rewind(self, step: int) -> None:
        """The run went back to the checkpoint at `step`: what was reported after it is void."""
        ...


class SilentObserver:
    def on_rollouts(self, batch: list[Rollout]) -> None:
        pass

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def on_rewind(self, step: int) -> None:
        pass


class StepObservers:
    """Several observers, told in turn (the stage's reporter and its live metrics)."""

    def __init__(self, *observers: StepObserver):
        self.observers = observers

    def on_rollouts(self, batch: list[Rollout]) -> None:
        for o in self.observers:
            o.on_rollouts(batch)

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        for o in self.observers:
            o.on_step(step, metrics)

    def on_rewind(self, step: int) -> None:
        for o in self.observers:
            o.on_rewind(step)


@dataclass
class RunStats:
    """What the loop measured; the driver returns it and the benchmark reads it."""

    steps: int = 0
    rollouts: int = 0
    response_tokens: int = 0
    wall_s: float = 0.0
    generator_busy_s: float = 0.0  # summed over generators
    scorer_busy_s: float = 0.0  # summed over scorers (the reward pool's own accounting)
    learner_busy_s: float = 0.0
    rollouts_in_flight_updated: int = 0  # handed to the learner with a weight update inside their generation
    staleness: collections.Counter = field(default_factory=collections.Counter)
    phases: dict[str, float] = field(default_factory=dict)
    final_version: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one per step of the surviving lineage
    faults: list[Fault] = field(default_factory=list)
    accounting: dict[str, Any] = field(default_factory=dict)

    def summary(self, n_generators: int, n_scorers: int) -> dict[str, Any]:
        """Throughput and each actor kind's busy fraction: busy seconds / (wall seconds x actors of the kind)."""
        wall = max(self.wall_s, 1e-9)
        return {
            "steps": self.steps,
            "rollouts": self.rollouts,
            "samples_per_s": self.rollouts / wall,
            "tokens_per_s": self.response_tokens / wall,
            "generator_busy": self.generator_busy_s / (wall * max(n_generators, 1)),
            "scorer_busy": self.scorer_busy_s / (wall * max(n_scorers, 1)),
            "learner_busy": self.learner_busy_s / wall,
            "staleness_histogram": {int(k): int(v) for k, v in sorted(self.staleness.items())},
            "max_staleness_seen": max(self.staleness) if self.staleness else 0,
            "rollouts_in_flight_updated": self.rollouts_in_flight_updated,
            "wall_s": self.wall_s,
            "phase_s": {k: round(v, 3) for k, v in self.phases.items()},
            "final_version": self.final_version,
            "faults": [dataclasses.asdict(f) for f in self.faults],
            **self.accounting,
        }


@dataclass(frozen=True)
class LoopState:
    """A look at the loop between two steps, for live monitoring: what it measured so far (`RunStats` with
    `wall_s` and `phases` filled in up to now, no metrics rows) and what it holds in flight."""

    stats: RunStats
    rollouts_in_system: int  # taken and not yet trained, dropped or rejected (at most ppo.buffer_size)
    depths: dict[str, int]  # rollouts waiting at each hop: to_score, scoring, buffered, training
    generate_calls: dict[str, int]  # generator name -> generate calls queued on it
    generator_versions: dict[str, int]  # generator name -> policy version its weights hold
    snapshot_ref: Any  # the newest published weight snapshot (None before the first publish)

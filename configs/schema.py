"""The one typed config schema of raylhf.

Every field has a docstring (shown by `raylhf config --explain`). Values are validated when the
config is loaded: unknown keys, wrong types and out-of-range values are rejected with the key
path. Each component takes its own section whole (plus the few run-level values it needs); defaults
and validation live here only. The sections are defined per family in `raylhf.configs.sections` and
importable from here: TaskConfig, DataConfig, ModelConfig, PretrainConfig, SFTConfig, RMConfig,
CollectConfig, LabelConfig, EvalConfig, IterateConfig, GenerationConfig, PPOConfig, RewardConfig, RewardSourceConfig,
SupervisionConfig, SupervisionOverride, ScorerSupervisionOverride, RayConfig, MetricsConfig (and the bases
Section, Placement).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from raylhf.configs.sections.base import Placement, Section
from raylhf.configs.sections.generation import GenerationConfig
from raylhf.configs.sections.inputs import DataConfig, ModelConfig, TaskConfig
from raylhf.configs.sections.ppo import PPOConfig
from raylhf.configs.sections.reward import RewardConfig, RewardSourceConfig
from raylhf.configs.sections.runtime import MetricsConfig, RayConfig
from raylhf.configs.sections.stages import (
    CollectConfig, EvalConfig, IterateConfig, LabelConfig, PretrainConfig, RMConfig, SFTConfig,
)
from raylhf.configs.sections.supervision import ScorerSupervisionOverride, SupervisionConfig, SupervisionOverride

__all__ = [
    "CollectConfig", "DataConfig", "EvalConfig", "GenerationConfig", "IterateConfig", "LabelConfig", "MetricsConfig",
    "ModelConfig", "PPOConfig", "Placement", "PretrainConfig", "RMConfig", "RayConfig", "RewardConfig",
    "RewardSourceConfig", "RunConfig", "SFTConfig", "ScorerSupervisionOverride", "Section", "SupervisionConfig",
    "SupervisionOverride", "TaskConfig",
]


class RunConfig(Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name: output goes to `<output_dir>/<name>/`."""
    output_dir: str = "runs"
    """Where runs are kept: a path (relative to the working directory; inside a submitted Ray job it must be
    absolute), or a storage URI `pyarrow.fs` opens (`file:///abs/path`, `s3://bucket/runs`, `gs://...`;
    options as a query string, e.g. `?endpoint_override=host:9000&scheme=http`). A URI run is worked on in
    `staging_dir` and mirrored to the URI after every stage and PPO checkpoint."""
    staging_dir: str | None = None
    """Local working copy of a run whose `output_dir` is a remote URI; default `~/.cache/raylhf/staging`."""
    seed: int = 0
    """Seed for model initialisation, data order and sampling."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device; `auto` picks CUDA when present, else CPU."""
    train_precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Forward-pass precision of the trainers: bf16 autocast (fp32 weights) when the device supports it natively."""
    torch_threads: int = Field(2, ge=1)
    """torch intra-op threads for in-driver training stages."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code when loaded. Off unless you trust the checkpoint."""
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    rm: RMConfig = RMConfig()
    collect: CollectConfig = CollectConfig()
    label: LabelConfig = LabelConfig()
    generation: GenerationConfig = GenerationConfig()
    eval: EvalConfig = EvalConfig()
    ppo: PPOConfig = PPOConfig()
    iterate: IterateConfig = IterateConfig()
    reward: RewardConfig = RewardConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    ray: RayConfig = RayConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _sections_fit_together(self) -> "RunConfig":
        """Checks across sections; each error is reported at the key to change, naming the others."""
        errors = []

        def fail(loc: tuple[str, ...], value: Any, reason: str) -> None:
            errors.append(InitErrorDetails(type=PydanticCustomError("cross_field", "{reason}", {"reason": reason}),
                                           loc=loc, input=value))

        p, g, r = self.ppo, self.generation, self.reward
        per_call = p.prompts_per_request * g.n
        if p.buffer_size < max(p.batch_size, per_call):
            # A smaller buffer never holds a full batch or the output of one generate call: the run would stall.
            fail(("ppo", "buffer_size"), p.buffer_size,
                 f"must be at least one learner batch (ppo.batch_size = {p.batch_size}) and one generate call "
                 f"(ppo.prompts_per_request x generation.n = {p.prompts_per_request} x {g.n} = {per_call})")
        if self.ray.address is None:
            have = self.ray.num_cpus if self.ray.num_cpus is not None else os.cpu_count()
            need = g.num_generators * g.num_cpus + r.num_actors * r.num_cpus + p.num_cpus
            if have is not None and need > have + 1e-9:
                source = "ray.num_cpus" if self.ray.num_cpus is not None else "this machine's CPU count, ray.num_cpus unset"
                fail(("ray", "num_cpus"), self.ray.num_cpus,
                     f"the PPO actors need {need:g} CPUs (generation.num_generators x generation.num_cpus + "
                     f"reward.num_actors x reward.num_cpus + ppo.num_cpus = {g.num_generators} x {g.num_cpus:g} + "
                     f"{r.num_actors} x {r.num_cpus:g} + {p.num_cpus:g}) but the local Ray has {have} ({source}); "
                     "lower those, or join a cluster with ray.address")
        if self.task.name == "none":
            _check_taskless(self, fail)
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def _check_taskless(cfg: RunConfig, fail) -> None:
    """A run without a task reads everything from files: name each missing one at its key."""
    needs = {("data", "prompts", "train"): cfg.data.prompts.train,
             ("data", "prompts", "heldout"): cfg.data.prompts.heldout,
             ("model", "path"): cfg.model.path,
             ("data", "demonstrations"): cfg.data.demonstrations}
    if cfg.reward.rm_path is None:
        needs[("data", "comparisons")] = cfg.data.comparisons
    for loc, value in needs.items():
        if value is None:
            fail(loc, value, "must be set when task.name is none (there is no task to write it)")
    if cfg.iterate.rounds > 0:
        fail(("iterate", "rounds"), cfg.iterate.rounds,
             "must be 0 when task.name is none: an iteration round ranks new samples and there is no labeler")
    if cfg.eval.judge == "labeler":
        fail(("eval", "judge"), cfg.eval.judge, "task.name is none, so there is no task labeler; use rm, auto or "
                                                 "a ranker by import path")

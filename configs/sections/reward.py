"""The reward service of the PPO stage (`reward`): its reward sources, the frozen models its scorer actors
run, normalisation of the reward, the pool's request sizes and its tolerance for unscorable rollouts."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from raylhf.configs.sections.base import Placement, Section


# Sources read off the scorers' own models, not a Python function.
MODEL_KINDS = ("rm", "ref_logprob")


class RewardSourceConfig(Section):
    kind: Literal["rm", "function", "token_function", "ref_logprob"] = "rm"
    """`rm`: the reward model's scalar at the last response token. `function`: a batched Python function
    `fn(prompts: list[str], responses: list[str], **kwargs) -> list[float]` over decoded text.
    `token_function`: the same over token ids, `fn(prompt_ids: list[list[int]], response_ids: list[list[int]],
    **kwargs) -> list[float]`. `ref_logprob`: the reference (SFT) policy's log-probability of the response,
    summed over its tokens, which the scorers compute for the KL term anyway: the SFT model's own judgement of
    the response as a reward feature (not in InstructGPT; with KL coefficient beta, the policy PPO aims at
    raises the SFT distribution to the power (beta + weight) / beta). Needs `ref_logprobs: true`."""
    weight: float = 1.0
    """Weight of this source in the reward: `reward = sum(weight_i * r_i)`, before normalisation and clipping."""
    path: str | None = None
    """Import path `package.module:function` of a `function` / `token_function` source (unset for `rm`)."""
    kwargs: dict[str, float | int | str | bool] = {}
    """Keyword arguments bound to the function, e.g. `{target_tokens: 24, coef: 0.05}`."""

    @field_validator("path")
    @classmethod
    def _import_path(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", v):
            raise ValueError("expected an import path 'package.module:function'")
        return v

    @model_validator(mode="after")
    def _path_matches_kind(self) -> "RewardSourceConfig":
        if self.kind in MODEL_KINDS and (self.path is not None or self.kwargs):
            raise ValueError(f"`{self.kind}` sources take no `path` or `kwargs`")
        if self.kind not in MODEL_KINDS and self.path is None:
            raise ValueError(f"a `{self.kind}` source needs `path: package.module:function`")
        return self


class RewardConfig(Placement):
    """Placement (`num_cpus`, `num_gpus`, `resources`, `cpus`) is per scorer actor."""

    rm_path: str | None = None
    """Reward-model checkpoint (HF directory with a one-label `*ForTokenClassification`, as the RM stage writes
    it, or `*ForSequenceClassification`); unset: the one the run's RM stage wrote. Needed only when a source
    is `rm`."""
    ref_path: str | None = None
    """Reference (SFT) policy checkpoint whose per-token logprobs the scorers return; unset: the run's SFT
    checkpoint."""
    ref_logprobs: bool = True
    """Compute reference logprobs in the scorers (off the learner's critical path). Off: `ref_logprobs` stays
    unset and whoever needs the KL term computes it."""
    tokenizer_path: str | None = None
    """Tokenizer used to decode text for `function` sources; unset: the reward model's, else the reference's."""
    sources: list[RewardSourceConfig] = [RewardSourceConfig()]
    """Reward sources and their weights, e.g. `[{kind: rm, weight: 1.0}, {kind: token_function,
    path: "raylhf.reward_service.rewards:length_penalty", weight: 1.0}]`; kinds: `rm`, `function`,
    `token_function`, `ref_logprob` (the SFT policy's summed log-prob of the response as a feature)."""
    normalize: Literal["none", "fixed", "running"] = "none"
    """Normalisation of the summed reward: `fixed` maps r to `(r - shift) * scale`; `running` whitens with the
    running mean/std of every reward scored so far (state saved with the pool); `none` leaves it raw."""
    shift: float = 0.0
    """`fixed` normalisation: subtracted from the reward (InstructGPT: the RM's mean score on demonstrations)."""
    scale: float = Field(1.0, gt=0.0)
    """`fixed` normalisation: multiplies the shifted reward."""
    clip: float | None = Field(None, gt=0.0)
    """Clip the final reward to [-clip, clip] after normalisation; unset: no clipping."""
    num_actors: int = Field(1, ge=1)
    """Scorer actors in the reward pool."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and activations of the frozen models (logprobs are always computed in float32)."""
    max_tokens_per_microbatch: int = Field(4096, ge=1)
    """Padded tokens (rows x longest sequence) per forward pass; sequences are sorted by length first."""
    request_size: int = Field(64, ge=1)
    """Most rollouts per request a blocking `score()` sends to one actor (a large batch is spread over actors)."""
    max_in_flight: int = Field(2, ge=1)
    """Requests queued per actor; with every actor full, `submit` blocks (backpressure)."""
    max_reject_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Share of scored rollouts that may be quarantined (unscorable: empty or too long, a token id outside a
    model's vocabulary, a non-finite score or reference logprob) before the run stops; checked once
    `reject_rate_min_rollouts` rollouts were seen."""
    reject_rate_min_rollouts: int = Field(256, ge=1)
    """Rollouts seen (scored plus quarantined) before `max_reject_rate` is enforced, so that a few early rejects
    do not stop a run."""

    @model_validator(mode="after")
    def _one_rm_source(self) -> "RewardConfig":
        if not self.sources:
            raise ValueError("`sources` needs at least one reward source")
        for kind in MODEL_KINDS:
            if sum(s.kind == kind for s in self.sources) > 1:
                raise ValueError(f"at most one `{kind}` source")
        if not self.ref_logprobs and any(s.kind == "ref_logprob" for s in self.sources):
            raise ValueError("a `ref_logprob` source needs `ref_logprobs: true` (the scorers compute it)")
        return self

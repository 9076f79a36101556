"""The generator actors of the PPO stage (`generation`): engine, sampling, and when published weights apply."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from raylhf.configs.sections.base import Placement


class GenerationConfig(Placement):
    """Placement (`num_cpus`, `num_gpus`, `resources`, `cpus`) is per generator actor."""

    engine: Literal["vllm", "hf"] = "vllm"
    """Generation backend: vLLM (default) or transformers `generate` (machines without vLLM; baseline)."""
    num_generators: int = Field(1, ge=1)
    """Generator actors."""
    kv_cache_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    """KV-cache memory per vLLM engine, in bytes (on CPU vLLM would otherwise reserve a share of RAM)."""
    max_model_len: int | None = Field(None, ge=1)
    """Longest prompt + response (tokens) a generation engine accepts; a longer request fails alone. None: the
    model config's context (`max_position_embeddings`), for vLLM capped at what one sequence can hold of
    `kv_cache_bytes` (vLLM's auto-fit), so a 32k-context model starts in a small KV cache instead of refusing to.
    A value above the model's context is an error at engine start."""
    enforce_eager: bool = True
    """Skip vLLM's torch.compile/graph capture: ~3 s start instead of ~40 s, slower decoding."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature for RL rollouts (0 = greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling threshold."""
    max_new_tokens: int = Field(32, ge=1)
    """Longest response in tokens."""
    n: int = Field(1, ge=1)
    """Samples per prompt."""
    stop_token_ids: list[int] = []
    """Token ids that end a response besides EOS (which always does); the stop token is kept in the response."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight and activation dtype of the generation engine; published weight snapshots must carry this dtype."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "ERROR"
    """vLLM's log level inside generator actors (its start-up INFO/WARNING lines are verbose and harmless)."""
    in_flight: int = Field(2, ge=1)
    """Generate requests each generator keeps queued, so it never idles waiting for the driver."""
    weight_updates: Literal["between_calls", "in_flight"] = "between_calls"
    """When a generator applies a published weight snapshot. `between_calls`: after its running generate call
    (and any call queued before the snapshot arrived), so every token of a call comes from one policy version.
    `in_flight` (vLLM engine only): at the next step boundary inside the running call (PipelineRL-style), so
    generation never waits for a call to drain and new weights take effect within one decoding step. Requests
    then finish under a newer version than they started with: a rollout's `policy_version` stays the version
    it started under (the staleness filter stays conservative) and `last_version` records the version in force
    when it finished. The keys and values already in the KV cache of running requests were computed with the
    old weights (as in PipelineRL); the behaviour logprobs are still those of the distribution that sampled
    each token, which is what the learner's importance weights need."""

    @field_validator("weight_updates")
    @classmethod
    def _in_flight_needs_vllm(cls, v: str, info: ValidationInfo) -> str:
        # Only vLLM's engine exposes the step loop an update can be slotted into; HF `generate` is one call.
        if v == "in_flight" and info.data.get("engine") != "vllm":
            raise ValueError(f"`in_flight` needs `generation.engine: vllm` (got {info.data.get('engine')!r}); "
                             "the hf engine applies weights between calls only")
        return v

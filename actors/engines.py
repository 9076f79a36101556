"""Build the generation engine the config names, in this process (no Ray involved)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from raylhf.configs.schema import GenerationConfig

if TYPE_CHECKING:  # pragma: no cover
    from raylhf.actors.hf_engine import HFEngine
    from raylhf.actors.vllm_engine import VLLMEngine


def threads_for(num_cpus: float) -> int:
    """torch threads for a share of `num_cpus` cores (at least one)."""
    return max(1, int(num_cpus))


def create_engine(
    cfg: GenerationConfig,
    checkpoint: str | os.PathLike,
    *,
    seed: int = 0,
    trust_remote_code: bool = False,
    version: int = 0,
) -> "VLLMEngine | HFEngine":
    """A `GenerationEngine` for `checkpoint` as configured by the `generation` section.

    vLLM is imported only for `engine: vllm`, so the hf engine runs where vLLM is not installed.
    """
    device = "cuda" if cfg.num_gpus > 0 else "cpu"
    if cfg.engine == "vllm":
        from raylhf.actors.vllm_engine import VLLMEngine

        return VLLMEngine(
            checkpoint,
            dtype=cfg.dtype,
            kv_cache_bytes=cfg.kv_cache_bytes,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            seed=seed,
            num_threads=threads_for(cfg.num_cpus) if device == "cpu" else None,
            trust_remote_code=trust_remote_code,
            version=version,
            weight_updates=cfg.weight_updates,
        )
    if cfg.engine == "hf":
        from raylhf.actors.hf_engine import HFEngine

        return HFEngine(
            checkpoint,
            dtype=cfg.dtype,
            device=device,
            seed=seed,
            max_model_len=cfg.max_model_len,
            num_threads=threads_for(cfg.num_cpus) if device == "cpu" else None,
            trust_remote_code=trust_remote_code,
            version=version,
        )
    raise ValueError(f"generation.engine: unknown engine {cfg.engine!r}; expected 'vllm' or 'hf'")

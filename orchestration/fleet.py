"""A set of generator actors behind one blocking `generate` call (for collection and evaluation)."""

from __future__ import annotations

import os
from typing import Sequence

from raylhf.configs.schema import GenerationConfig
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout


class GeneratorFleet:
    """Splits each batch of requests evenly over the generators and waits for all, with a deadline."""

    def __init__(self, cfg: GenerationConfig, checkpoint: str | os.PathLike, *, seed: int, trust_remote_code: bool,
                 name_prefix: str = "generator", timeout_s: float = 1800.0):
        from raylhf.actors.generator import start_generators

        self.actors = start_generators(cfg, checkpoint, seed=seed, trust_remote_code=trust_remote_code,
                                       name_prefix=name_prefix)
        self.names = [f"{name_prefix}-{i}" for i in range(len(self.actors))]
        self.timeout_s = timeout_s

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
                 ) -> list[list[Rollout] | RequestError]:
        from raylhf.actors.generator import wait_all

        n = len(self.actors)
        chunks = [list(requests[i::n]) for i in range(n)]
        live = [(a, name, c) for a, name, c in zip(self.actors, self.names, chunks) if c]
        parts = wait_all([a.generate.remote(c, sampling) for a, _, c in live], [name for _, name, _ in live],
                         self.timeout_s, "generate")
        results: list = [None] * len(requests)
        for (i, _), part in zip([(i, c) for i, c in enumerate(chunks) if c], parts):
            results[i::n] = part
        return results

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def __enter__(self) -> "GeneratorFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

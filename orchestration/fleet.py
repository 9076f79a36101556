"""`GeneratorFleet`: a set of generator actors behind one blocking `generate` call (collection, evaluation)."""

from __future__ import annotations

import os
from typing import Sequence

from raylhf.configs.schema import GenerationConfig
from raylhf.contracts import remote
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.records import Rollout


class GeneratorFleet:
    """Splits each batch of requests evenly over the generators and waits for all, with a deadline."""

    def __init__(self, cfg: GenerationConfig, checkpoint: str | os.PathLike, *, seed: int, trust_remote_code: bool,
                 name_prefix: str = "generator", timeout_s: float = 1800.0):
        from raylhf.actors.generator import start_generators

        self.actors = start_generators(cfg, checkpoint, seed=seed, trust_remote_code=trust_remote_code,
                                       name_prefix=name_prefix)
        self.timeout_s = timeout_s

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
                 ) -> list[list[Rollout] | RequestError]:
        n = len(self.actors)
        chunks = [list(requests[i::n]) for i in range(n)]
        live = [(i, a, c) for i, (a, c) in enumerate(zip(self.actors, chunks)) if c]
        parts = remote.get_all([a.handle.generate.remote(c, sampling) for _, a, c in live],
                               [a.name for _, a, _ in live], "generate", self.timeout_s)
        results: list = [None] * len(requests)
        for (i, _, _), part in zip(live, parts):
            results[i::n] = part
        return results

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a.handle)
        self.actors = []

    def __enter__(self) -> "GeneratorFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

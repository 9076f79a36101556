"""`GeneratorFleet`: a set of generator actors behind one blocking `generate` call (collection, evaluation), and
`policy_fleets`, which samples several policies with one fleet by swapping their weights in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import ray
import torch

from raylhf.actors.generator import start_generators
from raylhf.configs.schema import GenerationConfig
from raylhf.contracts import remote
from raylhf.contracts.protocols import GenerationRequest, RequestError, SamplingSpec
from raylhf.contracts.model_files import share_dir
from raylhf.contracts.records import Rollout
from raylhf.contracts.snapshot import build_snapshot, named_checkpoint_tensors
from raylhf.learners.models import load_causal_lm


class GeneratorFleet:
    """Splits each batch of requests evenly over the generators and waits for all, with a deadline."""

    def __init__(self, cfg: GenerationConfig, checkpoint: str | os.PathLike, *, seed: int, trust_remote_code: bool,
                 name_prefix: str = "generator", timeout_s: float = 1800.0):
        self.actors = start_generators(cfg, share_dir(checkpoint), seed=seed, trust_remote_code=trust_remote_code,
                                       name_prefix=name_prefix)
        self.timeout_s = timeout_s
        self.dtype, self.trust_remote_code = cfg.dtype, trust_remote_code
        self.version = 0
        self.signature = checkpoint_snapshot(checkpoint, self.dtype, 0, trust_remote_code).signature()

    def load_policy(self, checkpoint: str | os.PathLike) -> bool:
        """Swap another policy's weights into every generator (seconds cheaper than starting new actors);
        False, changing nothing, when its tensors do not match the fleet's model."""
        self.version += 1
        snapshot = checkpoint_snapshot(checkpoint, self.dtype, self.version, self.trust_remote_code)
        if snapshot.signature() != self.signature:
            return False
        ref = ray.put(snapshot)
        remote.get_all([a.handle.load_weights.remote(ref) for a in self.actors], [a.name for a in self.actors],
                       "load_weights", self.timeout_s)
        return True

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
        for a in self.actors:
            remote.kill(a.handle)
        self.actors = []

    def __enter__(self) -> "GeneratorFleet":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def checkpoint_snapshot(checkpoint: str | os.PathLike, dtype: str, version: int, trust_remote_code: bool):
    """The `WeightSnapshot` a generator of `dtype` loads for an HF causal-LM checkpoint."""
    model = load_causal_lm(checkpoint, "cpu", trust_remote_code)
    cast = getattr(torch, dtype)
    with torch.no_grad():
        return build_snapshot(((name, t.to(cast) if t.is_floating_point() else t)
                               for name, t in named_checkpoint_tensors(model)), version)


def policy_fleets(cfg: GenerationConfig, policies: dict[str, Path], *, seed: int, trust_remote_code: bool,
                  name_prefix: str) -> Iterator[tuple[str, Path, GeneratorFleet]]:
    """`(name, checkpoint, fleet holding it)` for each policy in turn, from one fleet whose weights are swapped
    for the next policy's (a new fleet only for a policy of another architecture); every fleet is stopped
    when the iteration ends."""
    fleet: GeneratorFleet | None = None
    try:
        for name, path in policies.items():
            if fleet is None or not fleet.load_policy(path):
                if fleet is not None:
                    fleet.shutdown()
                fleet = GeneratorFleet(cfg, path, seed=seed, trust_remote_code=trust_remote_code,
                                       name_prefix=f"{name_prefix}-{name}")
            yield name, path, fleet
    finally:
        if fleet is not None:
            fleet.shutdown()

"""Sampling policies through generator fleets and ranking the samples into comparisons.

`sample_rollouts` and `sample_texts` sample through one engine: a `GeneratorFleet`, or anything else with the
`raylhf.contracts.protocols.GenerationEngine.generate` signature. `sample_sources` and `sample_splits` sample
several policies with one fleet, their weights swapped in turn. `collect_comparisons` spreads K samples per
prompt over policies x temperatures and has a labeler rank them (`rank_into_comparisons`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from raylhf.actors.sampling import sampling_spec
from raylhf.configs.schema import RunConfig
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.protocols import GenerationEngine, GenerationRequest, Labeler, RequestError, SamplingSpec
from raylhf.contracts.records import Comparison, Prompt, Rollout
from raylhf.orchestration.fleet import GeneratorFleet, policy_fleets
from raylhf.orchestration.preflight import load_format
from raylhf.orchestration.ray_runtime import init_ray

log = logging.getLogger(__name__)


def sample_rollouts(engine: GeneratorFleet | GenerationEngine, fmt: PromptFormat,
                    prompts: Sequence[Prompt], sampling: SamplingSpec, batch_size: int = 256,
                    desc: str = "sampling") -> list[list[Rollout]]:
    """`sampling.n` rollouts per prompt (an empty list for a prompt the engine refused, logged)."""
    out: list[list[Rollout]] = []
    refused = 0
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True, leave=False)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        requests = [GenerationRequest(p.prompt_id, tuple(fmt.prompt_ids(p))) for p in chunk]
        for p, result in zip(chunk, engine.generate(requests, fmt.sampling(sampling))):
            if isinstance(result, RequestError):
                refused += 1
                log.warning("prompt %s refused by the engine: %s", p.prompt_id, result.reason)
                out.append([])
            else:
                out.append(result)
        bar.update(len(chunk))
    bar.close()
    if refused:
        log.warning("%d of %d prompts were refused by the engine", refused, len(prompts))
    return out


def sample_texts(engine: GeneratorFleet | GenerationEngine, fmt: PromptFormat,
                 prompts: Sequence[Prompt], sampling: SamplingSpec, desc: str = "sampling") -> list[list[str]]:
    return [[fmt.decode_response(r.response_ids) for r in rs]
            for rs in sample_rollouts(engine, fmt, prompts, sampling, desc=desc)]


def sample_sources(cfg: RunConfig, policies: dict[str, Path], prompts: Sequence[Prompt], n_per_source: int,
                   temperatures: Sequence[float], seed: int) -> dict[str, list[list[str]]]:
    """Per policy, its responses to each prompt over every temperature, via generator actors (one set for
    all the policies, their weights swapped in turn)."""
    init_ray(cfg.ray)
    out: dict[str, list[list[str]]] = {}
    for name, path, fleet in policy_fleets(cfg.generation, policies, seed=seed,
                                           trust_remote_code=cfg.trust_remote_code, name_prefix="collect"):
        fmt = load_format(cfg, path)
        out[name] = [[] for _ in prompts]
        for t in temperatures:
            spec = dataclasses.replace(sampling_spec(cfg.generation, seed=seed), n=n_per_source, temperature=t)
            texts = sample_texts(fleet, fmt, prompts, spec, desc=f"{name} T={t}")
            for acc, rs in zip(out[name], texts):
                acc.extend(rs)
    return out


def sample_splits(cfg: RunConfig, policies: dict[str, Path], by_split: dict[str, list[Prompt]], spec: SamplingSpec
                  ) -> dict[str, dict[str, list[str]]]:
    """Per policy, one response per prompt of every split (one set of generators, the policies' weights
    swapped in turn)."""
    init_ray(cfg.ray)
    out: dict[str, dict[str, list[str]]] = {}
    for name, path, fleet in policy_fleets(cfg.generation, policies, seed=cfg.seed,
                                           trust_remote_code=cfg.trust_remote_code, name_prefix="eval"):
        fmt = load_format(cfg, path)
        out[name] = {}
        for split, prompts in by_split.items():
            texts = sample_texts(fleet, fmt, prompts, spec, desc=f"eval {name} {split}")
            out[name][split] = [t[0] if t else "" for t in texts]
    return out


def interleave_sources(responses: list[str], n_sources: int) -> list[str]:
    """Reorder [src0 r0, src0 r1, src1 r0, ...] so the first K mix every source."""
    per = len(responses) // max(n_sources, 1)
    return [responses[s * per + i] for i in range(per) for s in range(n_sources)] if per else responses


def rank_into_comparisons(prompts: Sequence[Prompt], responses: Sequence[Sequence[str]], labeler: Labeler,
                          k: int) -> list[Comparison]:
    """Up to `k` distinct responses per prompt, ranked by the labeler. Prompts with < 2 distinct are skipped."""
    comparisons = []
    for p, rs in zip(prompts, responses):
        distinct = list(dict.fromkeys(rs))[:k]
        if len(distinct) < 2:
            continue
        comparisons.append(Comparison(p.prompt_id, p.prompt, distinct, labeler.rank(p.prompt, distinct),
                                      messages=p.messages))
    return comparisons


def collect_comparisons(cfg: RunConfig, policies: dict[str, Path], prompts: Sequence[Prompt], labeler: Labeler,
                        temperatures: Sequence[float], seed: int, samples: int | None = None) -> list[Comparison]:
    """Up to `collect.k` distinct responses per prompt, spread over policies x temperatures, ranked by `labeler`
    (any `raylhf.contracts.protocols.Labeler`: the task's simulated one, or human rankings behind the same
    calls). `samples` per prompt are drawn to find them (default: K and a spare one per source)."""
    k = cfg.collect.k
    n_sources = len(policies) * len(temperatures)
    # Duplicates are dropped: a spare sample per source by default, more for a policy that repeats itself.
    n_per_source = -(-samples // n_sources) if samples else -(-k // n_sources) + 1
    by_policy = sample_sources(cfg, policies, prompts, n_per_source, temperatures, seed)
    pooled = [[r for rs in per_prompt for r in rs] for per_prompt in zip(*by_policy.values())]
    mixed = [interleave_sources(rs, n_sources) for rs in pooled]
    return rank_into_comparisons(prompts, mixed, labeler, k)

"""Sampling policies through generator fleets and ranking the samples into comparisons.

`sample_rollouts` and `sample_texts` sample through one engine: a `GeneratorFleet`, or anything else with the
`raylhf.contracts.protocols.GenerationEngine.generate` signature. `sample_each_source` samples several policies x
temperatures with one fleet, the policies' weights swapped in turn; `sample_sources` pools its samples per policy
and `sample_splits` samples one response per prompt of several splits. The collect stage's two steps:
`sample_candidates` spreads K samples per prompt over policies x temperatures and keeps up to K distinct ones with
the source of each (`Candidates`); `rank_candidates` has a labeler rank them (`rank_into_comparisons` both at once,
for samples already drawn).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

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
T = TypeVar("T")


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


def sample_each_source(cfg: RunConfig, policies: dict[str, Path], prompts: Sequence[Prompt], n_per_source: int,
                       temperatures: Sequence[float], seed: int) -> Iterator[tuple[str, float, list[list[str]]]]:
    """`(policy, temperature, n_per_source responses per prompt)` for every policy x temperature, in that order,
    via generator actors (one set for all the policies, their weights swapped in turn)."""
    init_ray(cfg.ray)
    for name, path, fleet in policy_fleets(cfg.generation, policies, seed=seed,
                                           trust_remote_code=cfg.trust_remote_code, name_prefix="collect"):
        fmt = load_format(cfg, path)
        for t in temperatures:
            spec = dataclasses.replace(sampling_spec(cfg.generation, seed=seed), n=n_per_source, temperature=t)
            yield name, t, sample_texts(fleet, fmt, prompts, spec, desc=f"{name} T={t}")


def sample_sources(cfg: RunConfig, policies: dict[str, Path], prompts: Sequence[Prompt], n_per_source: int,
                   temperatures: Sequence[float], seed: int) -> dict[str, list[list[str]]]:
    """Per policy, its responses to each prompt over every temperature (`sample_each_source`)."""
    out: dict[str, list[list[str]]] = {name: [[] for _ in prompts] for name in policies}
    for name, _, texts in sample_each_source(cfg, policies, prompts, n_per_source, temperatures, seed):
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


def interleave_sources(responses: list[T], n_sources: int) -> list[T]:
    """Reorder [src0 r0, src0 r1, src1 r0, ...] so the first K mix every source."""
    per = len(responses) // max(n_sources, 1)
    return [responses[s * per + i] for i in range(per) for s in range(n_sources)] if per else responses


@dataclasses.dataclass(frozen=True)
class Candidates:
    """The distinct responses to one prompt that a labeler ranks, and where each was sampled."""

    prompt: Prompt
    responses: list[str]  # [K] distinct, 2 <= K <= collect.k, in the order they were drawn (sources interleaved)
    sources: list[str]  # [K] the policy and temperature that sampled each ("sft T=1.0"); "" when not known


def distinct_candidates(prompts: Sequence[Prompt], responses: Sequence[Sequence[str]], k: int,
                        sources: Sequence[Sequence[str]] | None = None) -> list[Candidates]:
    """Up to `k` distinct responses per prompt, each with the source of its first sample. Prompts with < 2
    distinct are left out."""
    out = []
    for i, (p, rs) in enumerate(zip(prompts, responses)):
        first: dict[str, str] = {}
        for r, source in zip(rs, sources[i] if sources is not None else [""] * len(rs)):
            first.setdefault(r, source)
        kept = list(first.items())[:k]
        if len(kept) >= 2:
            out.append(Candidates(p, [r for r, _ in kept], [source for _, source in kept]))
    return out


def rank_candidates(candidates: Sequence[Candidates], labeler: Labeler) -> list[Comparison]:
    """Each prompt's candidates ranked by `labeler` (the task's simulated one)."""
    return [Comparison(c.prompt.prompt_id, c.prompt.prompt, c.responses, labeler.rank(c.prompt.prompt, c.responses),
                       messages=c.prompt.messages) for c in candidates]


def rank_into_comparisons(prompts: Sequence[Prompt], responses: Sequence[Sequence[str]], labeler: Labeler,
                          k: int) -> list[Comparison]:
    """Up to `k` distinct responses per prompt, ranked by the labeler. Prompts with < 2 distinct are skipped."""
    return rank_candidates(distinct_candidates(prompts, responses, k), labeler)


def source_label(policy: str, temperature: float) -> str:
    """How a response's source is shown beside it in a labeling batch: `sft T=1.0`."""
    return f"{policy} T={temperature}"


def sample_candidates(cfg: RunConfig, policies: dict[str, Path], prompts: Sequence[Prompt],
                      temperatures: Sequence[float], seed: int, samples: int | None = None) -> list[Candidates]:
    """The collect stage's sample step: up to `collect.k` distinct responses per prompt, spread over policies x
    temperatures. `samples` per prompt are drawn to find them (default: K and a spare one per source)."""
    k = cfg.collect.k
    n_sources = len(policies) * len(temperatures)
    # Duplicates are dropped: a spare sample per source by default, more for a policy that repeats itself.
    n_per_source = -(-samples // n_sources) if samples else -(-k // n_sources) + 1
    pooled: list[list[tuple[str, str]]] = [[] for _ in prompts]  # (response, source), source after source
    for name, t, texts in sample_each_source(cfg, policies, prompts, n_per_source, temperatures, seed):
        for acc, rs in zip(pooled, texts):
            acc.extend((r, source_label(name, t)) for r in rs)
    mixed = [interleave_sources(rs, n_sources) for rs in pooled]
    return distinct_candidates(prompts, [[r for r, _ in rs] for rs in mixed], k, [[s for _, s in rs] for rs in mixed])

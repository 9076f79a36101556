"""The pipeline's stages, each a function of the config and the run's paths.

Each stage reads its inputs from files, writes its outputs as files (datasets, HF checkpoints,
metrics) and returns a summary dict that is also saved to `summaries/<stage>.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from raylhf.configs.schema import RunConfig
from raylhf.contracts.dataio import write_records
from raylhf.contracts.formatting import encode_prompt, encode_response
from raylhf.contracts.records import Comparison, Demonstration, Document, Prompt
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import read_comparisons, read_data, read_demonstrations, split_sizes
from raylhf.orchestration.rounds import SEED_SOURCE, source_tag, tagged

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout", "generalization")


def save_summary(paths: RunPaths, stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    path = paths.stage_summary(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return summary


def load_summary(paths: RunPaths, stage: str) -> dict[str, Any] | None:
    path = paths.stage_summary(stage)
    return json.loads(path.read_text()) if path.exists() else None


def _read(cfg: RunConfig, path: Path, record_type):
    return read_data(cfg, path, record_type)


def _setup_torch(cfg: RunConfig):
    import torch

    from raylhf.learners.models import pick_device
    from raylhf.learners.training import use_bf16

    torch.set_num_threads(cfg.torch_threads)
    device = pick_device(cfg.device)
    return device, use_bf16(cfg.train_precision, device)


# ---------------------------------------------------------------------------------------------- data
def stage_data(cfg: RunConfig, task, out_dir: Path) -> dict[str, Any]:
    """Write the task's prompts (3 splits), demonstrations, seed comparisons and pretraining corpus."""
    t0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        prompts = task.prompts(split)
        write_records(out_dir / f"prompts_{split}.jsonl", prompts, Prompt)
        counts[f"prompts_{split}"] = len(prompts)
    demos = task.demonstrations()
    write_records(out_dir / "demonstrations.jsonl", demos, Demonstration)
    comparisons = task.seed_comparisons(n=min(1000, cfg.task.n_train_prompts), k=cfg.collect.k, seed=cfg.seed)
    write_records(out_dir / "demo_comparisons.jsonl", tagged(comparisons, 0, SEED_SOURCE), Comparison)
    for split in ("train", "heldout"):
        docs = [Document(f"{split}-{i:06d}", text) for i, text in enumerate(task.pretraining_corpus(split))]
        write_records(out_dir / f"corpus_{split}.jsonl", docs, Document)
        counts[f"corpus_{split}"] = len(docs)
    counts.update(demonstrations=len(demos), demo_comparisons=len(comparisons), seconds=time.time() - t0)
    return counts


# ---------------------------------------------------------------------------------------------- pretrain
def stage_pretrain(cfg: RunConfig, paths: RunPaths, task) -> dict[str, Any]:
    """Train the BPE tokenizer and pretrain the demo base model on the task's corpus."""
    from raylhf.learners.models import build_causal_lm, count_parameters, train_tokenizer
    from raylhf.learners.pretrain import pack_documents, pretrain
    from raylhf.learners.training import MetricsLog

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    out = paths.model("base")
    docs = {split: _read(cfg, paths.corpus(split), Document) for split in ("train", "heldout")}  # before any write
    tokenizer = train_tokenizer(task.tokenizer_corpus(), cfg.model.vocab_size, out)
    model = build_causal_lm(cfg.model.preset, tokenizer, cfg.model.max_position_embeddings, seed=cfg.seed)

    def stream(split):
        ids = tokenizer([d.text for d in docs[split]], add_special_tokens=False)["input_ids"]
        return pack_documents(ids, tokenizer.bos_token_id, tokenizer.eos_token_id)

    metrics = pretrain(
        cfg.pretrain, model, stream("train"), stream("heldout"), device=device, bf16=bf16, seed=cfg.seed,
        log=MetricsLog(paths.metrics, "pretrain"),
    )
    model.save_pretrained(out)
    return {"parameters": count_parameters(model), "heldout_loss": metrics["heldout_loss"],
            "bf16": bf16, "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------- sft
def demonstration_examples(tokenizer, demos) -> list[tuple[list[int], list[int]]]:
    return [(encode_prompt(tokenizer, d.prompt), encode_response(tokenizer, d.response)) for d in demos]


def stage_sft(cfg: RunConfig, paths: RunPaths, model_path: Path, data_path: Path, out: Path) -> dict[str, Any]:
    """Fine-tune `model_path` on the demonstrations in `data_path`; save the best epoch to `out`."""
    from raylhf.learners.models import context_length, load_causal_lm, load_tokenizer
    from raylhf.learners.sft import train_sft
    from raylhf.learners.training import MetricsLog

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code, key="--model")
    context = context_length(model_path, cfg.trust_remote_code, key="--model")
    demos = read_demonstrations(cfg, data_path, tokenizer, context, model_path)
    n_val, _ = split_sizes(len(demos), cfg.sft.val_fraction, data_path, "demonstrations", "sft.val_fraction")
    model = load_causal_lm(model_path, cfg.device, cfg.trust_remote_code, key="--model")
    examples = demonstration_examples(tokenizer, demos)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(examples))
    val, train = [examples[i] for i in idx[:n_val]], [examples[i] for i in idx[n_val:]]
    metrics = train_sft(
        cfg.sft, model, train, val, pad_id=tokenizer.pad_token_id, device=device, bf16=bf16, seed=cfg.seed,
        log=MetricsLog(paths.metrics, "sft"),
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {**metrics, "train_examples": len(train), "val_examples": len(val), "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------- rm
def comparison_groups(tokenizer, comparisons) -> list[tuple[list[list[int]], list[int]]]:
    groups = []
    for c in comparisons:
        prompt_ids = encode_prompt(tokenizer, c.prompt)
        groups.append(([prompt_ids + encode_response(tokenizer, r) for r in c.responses], list(c.ranking)))
    return groups


def stage_rm(cfg: RunConfig, paths: RunPaths, sft_path: Path, data_path: Path | Sequence[Path], out: Path,
             demos_path: Path | None = None, init: Path | None = None) -> dict[str, Any]:
    """Train the reward model on ranked comparisons (one file, or the files of every round so far) and
    normalise it on demonstrations. It starts as a fresh scalar head on the SFT checkpoint, or from the
    reward model `init` (a warm start)."""
    from raylhf.learners.models import context_length, load_tokenizer
    from raylhf.learners.reward_model import (
        load_reward_model,
        normalise_rewards,
        reward_model_from_policy,
        train_reward_model,
    )
    from raylhf.learners.training import MetricsLog

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    tokenizer = load_tokenizer(sft_path, cfg.trust_remote_code, key="--model")
    context = context_length(sft_path, cfg.trust_remote_code, key="--model")
    files = [data_path] if isinstance(data_path, (str, Path)) else list(data_path)
    comparisons = [c for f in files for c in read_comparisons(cfg, f, tokenizer, context, sft_path)]
    n_val, _ = split_sizes(len(comparisons), cfg.rm.val_fraction, files[-1], "comparisons", "rm.val_fraction")
    demos = None
    if demos_path is not None and demos_path.exists():
        demos = read_demonstrations(cfg, demos_path, tokenizer, context, sft_path)
    if init is None:
        model = reward_model_from_policy(sft_path, cfg.device, cfg.trust_remote_code, key="--model")
    else:
        model = load_reward_model(init, cfg.device, cfg.trust_remote_code, key="iterate.rm_init")
    groups = comparison_groups(tokenizer, comparisons)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(groups))
    val, train = [groups[i] for i in idx[:n_val]], [groups[i] for i in idx[n_val:]]
    metrics = train_reward_model(
        cfg.rm, model, train, val, pad_id=tokenizer.pad_token_id, device=device, bf16=bf16, seed=cfg.seed,
        log=MetricsLog(paths.metrics, "rm"),
    )
    shift = None
    if demos is not None:
        seqs = [p + r for p, r in demonstration_examples(tokenizer, demos)]
        shift = normalise_rewards(model, seqs, tokenizer.pad_token_id, device)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    by_round = collections.Counter(c.round for c in comparisons)
    return {**metrics, "train_prompts": len(train), "val_prompts": len(val), "normalisation_shift": shift,
            "comparisons_by_round": {str(r): by_round[r] for r in sorted(by_round)},
            "init": str(init or sft_path), "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------- collect
def resolve_policy(paths: RunPaths, policy: str, key: str = "collect.policies") -> Path:
    """A stage name of this run (base, sft, ppo) or a checkpoint path; `key` is the config key or flag it came from."""
    from raylhf.learners.models import require_checkpoint

    if policy in ("base", "sft", "ppo"):
        return require_checkpoint(paths.model(policy), f"{key} '{policy}'", weights=True)
    return require_checkpoint(policy, key, weights=True)


def eval_policies(paths: RunPaths, specs: list[str] | None) -> dict[str, Path]:
    """`NAME=PATH` or stage names (`--policy`); by default every stage model of the run that exists."""
    from raylhf.configs.loader import ConfigError
    from raylhf.learners.models import is_checkpoint

    if not specs:
        found = {s: paths.model(s) for s in ("base", "sft", "ppo") if is_checkpoint(paths.model(s))}
        if not found:
            raise ConfigError(f"--policy: no policy checkpoints under {paths.root / 'models'}; pass --policy")
        return found
    out = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        out[name] = resolve_policy(paths, path or name, "--policy")
    return out


def _sample_sources(cfg: RunConfig, policies: dict[str, Path], prompts, n_per_source: int, temperatures,
                    seed: int) -> dict[str, list[list[str]]]:
    """Per policy, its responses to each prompt over every temperature, via generator actors (one set for
    all the policies, their weights swapped in turn)."""
    from raylhf.actors.sampling import sampling_spec
    from raylhf.learners.models import load_tokenizer
    from raylhf.orchestration.fleet import policy_fleets
    from raylhf.orchestration.ray_runtime import init_ray
    from raylhf.orchestration.sampling import sample_texts

    init_ray(cfg.ray)
    out: dict[str, list[list[str]]] = {}
    for name, path, fleet in policy_fleets(cfg.generation, policies, seed=seed,
                                           trust_remote_code=cfg.trust_remote_code, name_prefix="collect"):
        tokenizer = load_tokenizer(path, cfg.trust_remote_code)
        out[name] = [[] for _ in prompts]
        for t in temperatures:
            spec = dataclasses.replace(sampling_spec(cfg.generation, seed=seed), n=n_per_source, temperature=t)
            texts = sample_texts(fleet, tokenizer, prompts, spec, desc=f"{name} T={t}")
            for acc, rs in zip(out[name], texts):
                acc.extend(rs)
    return out


def interleave_sources(responses: list[str], n_sources: int) -> list[str]:
    """Reorder [src0 r0, src0 r1, src1 r0, ...] so the first K mix every source."""
    per = len(responses) // max(n_sources, 1)
    return [responses[s * per + i] for i in range(per) for s in range(n_sources)] if per else responses


def collect_comparisons(cfg: RunConfig, policies: dict[str, Path], prompts: list[Prompt], labeler,
                        temperatures: list[float], seed: int, samples: int | None = None) -> list[Comparison]:
    """Up to `collect.k` distinct responses per prompt, spread over policies x temperatures, ranked by `labeler`
    (any `raylhf.contracts.protocols.Labeler`: the task's simulated one, or human rankings behind the same
    calls). `samples` per prompt are drawn to find them (default: K and a spare one per source)."""
    from raylhf.orchestration.sampling import rank_into_comparisons

    k = cfg.collect.k
    n_sources = len(policies) * len(temperatures)
    # Duplicates are dropped: a spare sample per source by default, more for a policy that repeats itself.
    n_per_source = -(-samples // n_sources) if samples else -(-k // n_sources) + 1
    by_policy = _sample_sources(cfg, policies, prompts, n_per_source, temperatures, seed)
    pooled = [[r for rs in per_prompt for r in rs] for per_prompt in zip(*by_policy.values())]
    mixed = [interleave_sources(rs, n_sources) for rs in pooled]
    return rank_into_comparisons(prompts, mixed, labeler, k)


def stage_collect(cfg: RunConfig, paths: RunPaths, policies: dict[str, Path], prompts_path: Path, out: Path,
                  n_prompts: int, labeler_seed: int, seed_comparisons: Path | None = None) -> dict[str, Any]:
    """Sample K responses per prompt from the policies and have the task's labeler rank them (round 0)."""
    from raylhf.tasks import load_task

    t0 = time.time()
    task = load_task(cfg.task)
    prompts = _read(cfg, prompts_path, Prompt)[:n_prompts]
    comparisons = collect_comparisons(cfg, policies, prompts, task.labeler(labeler_seed), cfg.collect.temperatures,
                                      cfg.seed)
    comparisons = tagged(comparisons, 0, source_tag(policies))
    collected = len(comparisons)
    if seed_comparisons is not None and seed_comparisons.exists():
        comparisons += tagged(_read(cfg, seed_comparisons, Comparison), 0, SEED_SOURCE)
    write_records(out, comparisons, Comparison)
    return {"prompts": len(prompts), "collected": collected, "total": len(comparisons),
            "mean_k": float(np.mean([len(c.responses) for c in comparisons])), "seconds": time.time() - t0}


def stage_round_collect(cfg: RunConfig, paths: RunPaths, r: int, labeler) -> dict[str, Any]:
    """Iteration round `r`'s comparisons: K samples per fresh training prompt (`iterate.n_prompts`, none ranked
    by an earlier round) from `iterate.policies` x `iterate.temperatures`, ranked by `labeler`, tagged with the
    round and the policies, written to the round's `comparisons.jsonl`."""
    from raylhf.configs.loader import ConfigError
    from raylhf.learners.models import require_checkpoint
    from raylhf.orchestration import rounds

    t0 = time.time()
    n = cfg.iterate.n_prompts
    earlier = [c for f in rounds.comparison_files(paths, r - 1) for c in _read(cfg, f, Comparison)]
    prompts = rounds.fresh_prompts(_read(cfg, paths.prompts("train"), Prompt), earlier, n)
    if len(prompts) < n:
        raise ConfigError(f"iterate.n_prompts: round {r} needs {n} training prompts no earlier round ranked, "
                          f"only {len(prompts)} are left in {paths.prompts('train')}; lower it or raise "
                          "task.n_train_prompts")
    policies = rounds.round_policies(paths, r, cfg.iterate.policies)
    for name, path in policies.items():
        require_checkpoint(path, f"iterate.policies '{name}'", weights=True)
    source = rounds.source_tag(policies)
    comparisons = rounds.tagged(
        collect_comparisons(cfg, policies, prompts, labeler, cfg.iterate.temperatures, cfg.seed + r,
                            samples=cfg.iterate.samples_per_prompt), r, source)
    write_records(paths.round(r).comparisons, comparisons, Comparison)
    return {"prompts": len(prompts), "collected": len(comparisons), "source": source,
            "total": len(earlier) + len(comparisons),
            "mean_k": float(np.mean([len(c.responses) for c in comparisons])), "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------- rm eval
def stage_rm_eval(cfg: RunConfig, paths: RunPaths, sft_path: Path, rm_path: Path,
                  current: tuple[str, Path] | None = None, previous_rm: Path | None = None) -> dict[str, Any]:
    """RM pairwise accuracy on held-out prompts against the labeler, with its ceiling (the noiseless utility's
    accuracy against the same labels) and the baseline of scoring by the SFT model's own log-probability;
    overall, on pairs of equal token length, and per kind of contrast when the task can tell them apart
    (`ContrastingTask`).

    The pairs are K samples per prompt of the SFT policy (`heldout`, `generalization`) and, with `current`
    (name, checkpoint), also of that policy (under `current`): in an iteration round, the policy PPO continues
    from, whose samples are where PPO uses the RM. With `previous_rm`, the previous round's reward model is
    scored on that policy's pairs too (`previous_rm_accuracy`, ...; on SFT's pairs, which every round samples
    alike, the previous round's own evaluation has it)."""
    from raylhf.learners.models import load_causal_lm, load_tokenizer
    from raylhf.learners.reward_model import load_reward_model
    from raylhf.tasks import load_task

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    task = load_task(cfg.task)
    labeler = task.labeler(cfg.collect.labeler_seed)
    tokenizer = load_tokenizer(sft_path, cfg.trust_remote_code, key="--sft")
    sft = load_causal_lm(sft_path, cfg.device, cfg.trust_remote_code, key="--sft")
    rms = {"rm": load_reward_model(rm_path, cfg.device, cfg.trust_remote_code, key="--rm")}
    if current is not None and previous_rm is not None:
        previous = load_reward_model(previous_rm, cfg.device, cfg.trust_remote_code, key="previous_rm")
    n, k = cfg.eval.rm_eval_prompts, cfg.collect.k
    summary: dict[str, Any] = {}
    by_split = {split: _read(cfg, paths.prompts(split), Prompt)[:n] for split in ("heldout", "generalization")}
    everything = [p for ps in by_split.values() for p in ps]
    sources = {"sft": sft_path, **({current[0]: current[1]} if current is not None else {})}
    sampled = _sample_sources(cfg, sources, everything, k + 1, [1.0], cfg.seed + 7)
    for source, pooled_all in sampled.items():
        out = summary if source == "sft" else summary.setdefault("current", {"policy": source})
        scorers = rms if source == "sft" or previous_rm is None else {**rms, "previous_rm": previous}
        offset = 0
        for split, prompts in by_split.items():
            pooled, offset = pooled_all[offset : offset + len(prompts)], offset + len(prompts)
            out[split] = _rm_accuracies(task, labeler, tokenizer, sft, scorers, prompts, pooled, k, device)
    summary["seconds"] = time.time() - t0
    return summary


def _rm_accuracies(task, labeler, tokenizer, sft, rms: dict[str, Any], prompts: list[Prompt],
                   responses: list[list[str]], k: int, device) -> dict[str, Any]:
    """Pairwise accuracies of the reward models `rms`, the ceiling and the SFT log-prob on the labeler's
    rankings of `responses` (K per prompt): overall, on equal-length pairs, per kind of contrast."""
    return pair_accuracies(task, score_pairs(task, labeler, tokenizer, sft, rms, prompts, responses, k, device))


@dataclasses.dataclass
class ScoredPairs:
    """The labeler's rankings of up to K distinct responses per prompt, every response's score under each
    scorer (`scores[name][g][i]`: comparison g's response i) and its token length (`lengths[g][i]`)."""

    comparisons: list[Comparison]
    scores: dict[str, list[list[float]]]
    lengths: list[list[int]]

    @property
    def rankings(self) -> list[list[int]]:
        return [list(c.ranking) for c in self.comparisons]

    def ranked(self) -> list[tuple[int, int, int]]:
        """`(group, winner, loser)` of every ranked pair."""
        from raylhf.orchestration.evaluation import ranked_pairs

        return ranked_pairs(self.rankings)

    def equal_length(self, ranked: list[tuple[int, int, int]]) -> list[int]:
        """Indices into `ranked` of the pairs whose two responses have the same token length."""
        return [i for i, (g, w, l) in enumerate(ranked) if self.lengths[g][w] == self.lengths[g][l]]

    def add_reward_model(self, name: str, rm, tokenizer, device) -> None:
        """Score every response with the reward model `rm`, as scorer `name`."""
        from raylhf.learners.reward_model import score_sequences
        from raylhf.orchestration.evaluation import split_by_group

        seqs = [seq for g in comparison_groups(tokenizer, self.comparisons) for seq in g[0]]
        flat = score_sequences(rm, seqs, tokenizer.pad_token_id, device)
        self.scores[name] = split_by_group(flat, [len(c.responses) for c in self.comparisons])


def score_pairs(task, labeler, tokenizer, sft, rms: dict[str, Any], prompts: list[Prompt],
                responses: list[list[str]], k: int, device) -> ScoredPairs:
    """Rank `responses` (up to K distinct per prompt) with `labeler` and score them with the reward models
    `rms`, the ceiling (`ceiling`: the task's noiseless utility) and the SFT log-prob (`sft_logprob`)."""
    from raylhf.learners.sft import response_logprobs
    from raylhf.orchestration.evaluation import split_by_group
    from raylhf.orchestration.sampling import rank_into_comparisons

    comparisons = rank_into_comparisons(prompts, responses, labeler, k)
    sizes = [len(c.responses) for c in comparisons]
    pairs = [(encode_prompt(tokenizer, c.prompt), encode_response(tokenizer, r))
             for c in comparisons for r in c.responses]
    scored = ScoredPairs(comparisons, {}, split_by_group([len(r) for _, r in pairs], sizes))
    for name, rm in rms.items():
        scored.add_reward_model(name, rm, tokenizer, device)
    scored.scores["ceiling"] = split_by_group([task.utility(c.prompt, r) for c in comparisons for r in c.responses],
                                              sizes)
    scored.scores["sft_logprob"] = split_by_group(response_logprobs(sft, pairs, tokenizer.pad_token_id, device), sizes)
    return scored


def pair_accuracies(task, scored: ScoredPairs) -> dict[str, Any]:
    """Every scorer's pairwise accuracy on `scored`: overall, on equal-length pairs, per kind of contrast."""
    from raylhf.contracts.protocols import ContrastingTask
    from raylhf.orchestration.evaluation import agreement_table, pairwise_agreement

    comparisons, rankings, lengths = scored.comparisons, scored.rankings, scored.lengths
    s: dict[str, Any] = {"comparisons": len(comparisons)}
    for name, grouped in scored.scores.items():
        s[f"{name}_accuracy"] = pairwise_agreement(grouped, rankings)
        # Pairs of equal token length: what a score knows beyond "shorter is better".
        s[f"{name}_accuracy_equal_length"] = pairwise_agreement(grouped, rankings, lengths)
    if "rm" in scored.scores:
        s["rm_vs_ceiling"] = s["rm_accuracy"] / s["ceiling_accuracy"]
    if isinstance(task, ContrastingTask):
        # What the RM gets right per kind of difference between the two responses (correct vs wrong, ...).
        ranked = scored.ranked()
        kinds = [task.contrast(comparisons[g].prompt, comparisons[g].responses[w], comparisons[g].responses[l])
                 for g, w, l in ranked]
        for key, subset in (("by_contrast", range(len(ranked))), ("by_contrast_equal_length",
                                                                    scored.equal_length(ranked))):
            s[key] = agreement_table(scored.scores, [ranked[i] for i in subset], [kinds[i] for i in subset])
    return s


# ---------------------------------------------------------------------------------------------- eval
def stage_eval(cfg: RunConfig, paths: RunPaths, policies: dict[str, Path], rm_path: Path | None = None
               ) -> dict[str, Any]:
    """Sample every policy on the held-out splits and judge: win rates (labeler, ties half), per-family
    instruction following, mean true utility, mean RM score, LM loss on held-out pretraining text."""
    from raylhf.learners.models import load_causal_lm, load_tokenizer
    from raylhf.learners.pretrain import evaluate_lm, pack_documents
    from raylhf.learners.reward_model import load_reward_model, score_sequences
    from raylhf.orchestration.sampling import instruction_following, mean_utility, win_rate
    from raylhf.actors.sampling import sampling_spec
    from raylhf.tasks import load_task

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    task = load_task(cfg.task)
    labeler = task.labeler(cfg.eval.labeler_seed)
    spec = dataclasses.replace(sampling_spec(cfg.generation, seed=cfg.seed + 11), n=1, temperature=cfg.eval.temperature)
    rm = load_reward_model(rm_path, cfg.device, cfg.trust_remote_code, key="--rm") if rm_path else None
    corpus = _read(cfg, paths.corpus("heldout"), Document)
    summary: dict[str, Any] = {"policies": {}, "win_rates": {}}
    by_split = {split: _read(cfg, paths.prompts(split), Prompt)[: cfg.eval.n_prompts]
                for split in ("heldout", "generalization")}
    summary["n_prompts"] = {split: len(prompts) for split, prompts in by_split.items()}  # for standard errors
    responses = _sample_splits(cfg, policies, by_split, spec)
    for split, prompts in by_split.items():
        for name, path in policies.items():
            texts = responses[name][split]
            entry = summary["policies"].setdefault(name, {})
            entry[split] = {
                "utility": mean_utility(task, prompts, texts),
                "follows": instruction_following(task, prompts, texts),
                "mean_words": float(np.mean([len(t.split()) for t in texts])),
            }
            if rm is not None:
                tokenizer = load_tokenizer(path, cfg.trust_remote_code)
                seqs = [encode_prompt(tokenizer, p.prompt) + encode_response(tokenizer, t) for p, t in zip(prompts, texts)]
                entry[split]["rm_score"] = float(score_sequences(rm, seqs, tokenizer.pad_token_id, device).mean())
        names = list(policies)
        for i, a in enumerate(names):
            for b in names[:i]:
                summary["win_rates"].setdefault(split, {})[f"{a}_vs_{b}"] = win_rate(
                    labeler, prompts, responses[a][split], responses[b][split])
    for name, path in policies.items():
        tokenizer = load_tokenizer(path, cfg.trust_remote_code)
        model = load_causal_lm(path, cfg.device, cfg.trust_remote_code)
        ids = tokenizer([d.text for d in corpus], add_special_tokens=False)["input_ids"]
        stream = pack_documents(ids, tokenizer.bos_token_id, tokenizer.eos_token_id)
        summary["policies"][name]["pretrain_heldout_loss"] = evaluate_lm(model, stream, cfg.pretrain.seq_len,
                                                                         device, bf16)
    summary["seconds"] = time.time() - t0
    return summary


def _sample_splits(cfg: RunConfig, policies: dict[str, Path], by_split: dict[str, list], spec
                   ) -> dict[str, dict[str, list[str]]]:
    """Per policy, one response per prompt of every split (one set of generators, the policies' weights
    swapped in turn)."""
    from raylhf.learners.models import load_tokenizer
    from raylhf.orchestration.fleet import policy_fleets
    from raylhf.orchestration.ray_runtime import init_ray
    from raylhf.orchestration.sampling import sample_texts

    init_ray(cfg.ray)
    out: dict[str, dict[str, list[str]]] = {}
    for name, path, fleet in policy_fleets(cfg.generation, policies, seed=cfg.seed,
                                           trust_remote_code=cfg.trust_remote_code, name_prefix="eval"):
        tokenizer = load_tokenizer(path, cfg.trust_remote_code)
        out[name] = {}
        for split, prompts in by_split.items():
            texts = sample_texts(fleet, tokenizer, prompts, spec, desc=f"eval {name} {split}")
            out[name][split] = [t[0] if t else "" for t in texts]
    return out

"""The evaluation stages: `stage_rm_eval` (the reward model's pairwise accuracy against the labeler, beside its
ceiling and the SFT log-prob baseline) and `stage_eval` (policies judged on held-out prompts), with the
scored pairs behind the first (`ScoredPairs`, `score_pairs`, `pair_accuracies`).

Like the training stages in `stages`, each returns a summary dict that is saved to `summaries/<stage>.json`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylhf.actors.sampling import sampling_spec
from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.protocols import ContrastingTask, Labeler, Task
from raylhf.contracts.records import Comparison, Document, Prompt
from raylhf.learners.models import is_checkpoint, load_causal_lm
from raylhf.learners.pretrain import evaluate_lm, pack_documents
from raylhf.learners.reward_model import load_reward_model, score_sequences
from raylhf.learners.sft import response_logprobs
from raylhf.orchestration.evaluation import (
    agreement_table,
    instruction_following,
    kl_estimate,
    mean_utility,
    pairwise_agreement,
    ranked_pairs,
    split_by_group,
)
from raylhf.orchestration.judge import judge_win_rates, load_judge
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import load_format, read_data
from raylhf.orchestration.provenance import provenance
from raylhf.orchestration.sample_and_rank import rank_into_comparisons, sample_sources, sample_splits
from raylhf.orchestration.stages import comparison_groups, resolve_policy, setup_torch
from raylhf.tasks import load_task


def eval_policies(paths: RunPaths, specs: list[str] | None) -> dict[str, Path]:
    """`NAME=PATH` or stage names (`--policy`); by default every stage model of the run that exists."""
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
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
    task = load_task(cfg.task)
    labeler = task.labeler(cfg.collect.labeler_seed)
    fmt = load_format(cfg, sft_path, key="--sft")
    sft = load_causal_lm(sft_path, cfg.device, cfg.trust_remote_code, key="--sft")
    rms = {"rm": load_reward_model(rm_path, cfg.device, cfg.trust_remote_code, key="--rm")}
    if current is not None and previous_rm is not None:
        previous = load_reward_model(previous_rm, cfg.device, cfg.trust_remote_code, key="previous_rm")
    n, k = cfg.eval.rm_eval_prompts, cfg.collect.k
    summary: dict[str, Any] = {}
    by_split = {split: read_data(cfg, paths.prompts(split), Prompt)[:n] for split in ("heldout", "generalization")}
    everything = [p for ps in by_split.values() for p in ps]
    sources = {"sft": sft_path, **({current[0]: current[1]} if current is not None else {})}
    sampled = sample_sources(cfg, sources, everything, k + 1, [1.0], cfg.seed + 7)
    for source, pooled_all in sampled.items():
        out = summary if source == "sft" else summary.setdefault("current", {"policy": source})
        scorers = rms if source == "sft" or previous_rm is None else {**rms, "previous_rm": previous}
        offset = 0
        for split, prompts in by_split.items():
            pooled, offset = pooled_all[offset : offset + len(prompts)], offset + len(prompts)
            out[split] = _rm_accuracies(task, labeler, fmt, sft, scorers, prompts, pooled, k, device)
    summary["seconds"] = time.time() - t0
    evaluated = {"sft": sft_path, "rm": rm_path, **({current[0]: current[1]} if current is not None else {}),
                 **({"previous_rm": previous_rm} if current is not None else {})}
    summary.update(provenance(paths, evaluated=evaluated,
                              inputs={split: paths.prompts(split) for split in by_split}))
    return summary


def _rm_accuracies(task: Task, labeler: Labeler, fmt: PromptFormat, sft: torch.nn.Module,
                   rms: dict[str, torch.nn.Module], prompts: list[Prompt], responses: list[list[str]], k: int,
                   device: torch.device) -> dict[str, Any]:
    """Pairwise accuracies of the reward models `rms`, the ceiling and the SFT log-prob on the labeler's
    rankings of `responses` (K per prompt): overall, on equal-length pairs, per kind of contrast."""
    return pair_accuracies(task, score_pairs(task, labeler, fmt, sft, rms, prompts, responses, k, device))


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

    @property
    def ties(self) -> list[list[bool] | None]:
        return [c.tied for c in self.comparisons]

    def ranked(self) -> list[tuple[int, int, int]]:
        """`(group, winner, loser)` of every ranked pair (a labeler's tied pairs are none)."""
        return ranked_pairs(self.rankings, self.ties)

    def equal_length(self, ranked: list[tuple[int, int, int]]) -> list[int]:
        """Indices into `ranked` of the pairs whose two responses have the same token length."""
        return [i for i, (g, w, l) in enumerate(ranked) if self.lengths[g][w] == self.lengths[g][l]]

    def add_reward_model(self, name: str, rm: torch.nn.Module, fmt: PromptFormat, device: torch.device) -> None:
        """Score every response with the reward model `rm`, as scorer `name`."""
        seqs = [seq for g in comparison_groups(fmt, self.comparisons) for seq in g[0]]
        flat = score_sequences(rm, seqs, fmt.tokenizer.pad_token_id, device)
        self.scores[name] = split_by_group(flat, [len(c.responses) for c in self.comparisons])


def score_pairs(task: Task, labeler: Labeler, fmt: PromptFormat, sft: torch.nn.Module,
                rms: dict[str, torch.nn.Module], prompts: list[Prompt], responses: list[list[str]], k: int,
                device: torch.device) -> ScoredPairs:
    """Rank `responses` (up to K distinct per prompt) with `labeler` and score them with the reward models
    `rms`, the ceiling (`ceiling`: the task's noiseless utility) and the SFT log-prob (`sft_logprob`)."""
    comparisons = rank_into_comparisons(prompts, responses, labeler, k)
    sizes = [len(c.responses) for c in comparisons]
    pairs = [(fmt.prompt_ids(c), fmt.response_ids(r)) for c in comparisons for r in c.responses]
    scored = ScoredPairs(comparisons, {}, split_by_group([len(r) for _, r in pairs], sizes))
    for name, rm in rms.items():
        scored.add_reward_model(name, rm, fmt, device)
    scored.scores["ceiling"] = split_by_group([task.utility(c.prompt, r) for c in comparisons for r in c.responses],
                                              sizes)
    scored.scores["sft_logprob"] = split_by_group(response_logprobs(sft, pairs, fmt.tokenizer.pad_token_id, device),
                                                  sizes)
    return scored


def pair_accuracies(task: Task, scored: ScoredPairs) -> dict[str, Any]:
    """Every scorer's pairwise accuracy on `scored`: overall, on equal-length pairs, per kind of contrast."""
    comparisons, rankings, lengths = scored.comparisons, scored.rankings, scored.lengths
    s: dict[str, Any] = {"comparisons": len(comparisons)}
    for name, grouped in scored.scores.items():
        s[f"{name}_accuracy"] = pairwise_agreement(grouped, rankings, ties=scored.ties)
        # Pairs of equal token length: what a score knows beyond "shorter is better".
        s[f"{name}_accuracy_equal_length"] = pairwise_agreement(grouped, rankings, lengths, scored.ties)
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
    """Sample every policy on the held-out splits and judge: win rates by the judge (`eval.judge`, ties half;
    `judge` in the summary says which), mean response length in words and tokens, mean RM score, KL to the SFT
    policy on the policy's own samples, LM loss on held-out pretraining text; with a task also per-family
    instruction following and mean true utility."""
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
    task = load_task(cfg.task)
    judge, judge_name = load_judge(cfg, paths, task)
    spec = dataclasses.replace(sampling_spec(cfg.generation, seed=cfg.seed + 11), n=1, temperature=cfg.eval.temperature)
    rm = load_reward_model(rm_path, cfg.device, cfg.trust_remote_code, key="--rm") if rm_path else None
    corpus = read_data(cfg, paths.corpus("heldout"), Document) if paths.corpus("heldout").exists() else []
    summary: dict[str, Any] = {"policies": {}, "win_rates": {}, "judge": judge_name}
    # Your data has a held-out split; a task's also has a generalization split.
    splits = [s for s in ("heldout", "generalization") if s == "heldout" or paths.prompts(s).exists()]
    by_split = {split: read_data(cfg, paths.prompts(split), Prompt)[: cfg.eval.n_prompts] for split in splits}
    summary["n_prompts"] = {split: len(prompts) for split, prompts in by_split.items()}  # for standard errors
    responses = sample_splits(cfg, policies, by_split, spec)
    fmts = {name: load_format(cfg, path) for name, path in policies.items()}
    for split, prompts in by_split.items():
        for name in policies:
            texts, fmt = responses[name][split], fmts[name]
            entry = summary["policies"].setdefault(name, {})
            entry[split] = {"mean_words": float(np.mean([len(t.split()) for t in texts])),
                            "mean_tokens": float(np.mean([len(fmt.response_ids(t, end=False)) for t in texts]))}
            if task is not None:
                entry[split].update(utility=mean_utility(task, prompts, texts),
                                    follows=instruction_following(task, prompts, texts))
            if rm is not None:
                seqs = [fmt.prompt_ids(p) + fmt.response_ids(t) for p, t in zip(prompts, texts)]
                entry[split]["rm_score"] = float(score_sequences(rm, seqs, fmt.tokenizer.pad_token_id, device).mean())
        if judge is not None and len(policies) > 1:
            summary["win_rates"][split] = judge_win_rates(judge, prompts, {n: responses[n][split] for n in policies})
    _likelihoods(cfg, policies, fmts, by_split, responses, corpus, summary["policies"], device, bf16)
    summary["seconds"] = time.time() - t0
    # The reward model scored every policy's responses (`rm_score`): its weights are part of what the figures are.
    summary.update(provenance(paths, evaluated={**policies, "rm": rm_path},
                              inputs={**{split: paths.prompts(split) for split in by_split},
                                      "corpus": paths.corpus("heldout") if corpus else None}))
    return summary


def _likelihoods(cfg: RunConfig, policies: dict[str, Path], fmts: dict[str, PromptFormat],
                 by_split: dict[str, list[Prompt]], responses: dict[str, dict[str, list[str]]],
                 corpus: list[Document], out: dict[str, Any], device: torch.device, bf16: bool) -> None:
    """Into `out[policy]`: per split the KL to SFT on the policy's own samples (`kl_to_sft`, when SFT is among
    the policies), and the LM loss on held-out pretraining text (`pretrain_heldout_loss`, when there is some).
    Each policy is loaded once."""
    sft = load_causal_lm(policies["sft"], cfg.device, cfg.trust_remote_code) if "sft" in policies else None
    for name, path in policies.items():
        if sft is None and not corpus:
            return
        fmt = fmts[name]
        model = sft if name == "sft" else load_causal_lm(path, cfg.device, cfg.trust_remote_code)
        for split, prompts in by_split.items() if sft is not None else ():
            if name == "sft":
                out[name][split]["kl_to_sft"] = 0.0  # the same model on the same tokens
                continue
            # The samples as text, tokenised again as the RM scores them: a response cut at max_new_tokens
            # gains the end-of-turn token it was not sampled with, under both models alike.
            examples = [(fmt.prompt_ids(p), fmt.response_ids(t)) for p, t in zip(prompts, responses[name][split])]
            pad = fmt.tokenizer.pad_token_id
            out[name][split]["kl_to_sft"] = kl_estimate(response_logprobs(model, examples, pad, device),
                                                        response_logprobs(sft, examples, pad, device))
        if corpus:
            tokenizer = fmt.tokenizer
            ids = tokenizer([d.text for d in corpus], add_special_tokens=False)["input_ids"]
            stream = pack_documents(ids, tokenizer.bos_token_id, tokenizer.eos_token_id)
            out[name]["pretrain_heldout_loss"] = evaluate_lm(model, stream, cfg.pretrain.seq_len, device, bf16)

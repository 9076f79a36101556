"""The pipeline's training stages (data, pretrain, SFT, reward model), each a function of the config and the
run's paths, and what every stage shares: its summary file, torch set-up, policies named by stage.

Each stage reads its inputs from files, writes its outputs as files (datasets, HF checkpoints,
metrics) and returns a summary dict that is also saved to `summaries/<stage>.json`. The collect stage is in
`collect_stage`, the evaluation stages in `eval_stages`.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from raylhf.configs.schema import RunConfig
from raylhf.contracts.dataio import write_records
from raylhf.contracts.formatting import encode_prompt, encode_response
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.protocols import Task
from raylhf.contracts.records import Comparison, Demonstration, Document, Prompt
from raylhf.learners.models import (
    build_causal_lm,
    context_length,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    pick_device,
    train_tokenizer,
)
from raylhf.learners.pretrain import pack_documents, pretrain
from raylhf.learners.reward_model import (
    load_reward_model,
    normalise_rewards,
    reward_model_from_policy,
    train_reward_model,
)
from raylhf.learners.sft import train_sft
from raylhf.learners.training import MetricsLog, use_bf16
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import read_comparisons, read_data, read_demonstrations, split_sizes
from raylhf.orchestration.rounds import SEED_SOURCE, tagged

if TYPE_CHECKING:  # pragma: no cover  (annotations only: transformers takes a second to import)
    from transformers import PreTrainedTokenizerBase

SPLITS = ("train", "heldout", "generalization")


def save_summary(paths: RunPaths, stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    path = paths.stage_summary(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return summary


def load_summary(paths: RunPaths, stage: str) -> dict[str, Any] | None:
    path = paths.stage_summary(stage)
    return json.loads(path.read_text()) if path.exists() else None


def setup_torch(cfg: RunConfig) -> tuple[torch.device, bool]:
    """The device of an in-driver stage and whether it trains under bf16 autocast (`train_precision`), with
    torch's intra-op threads set to `torch_threads`."""
    torch.set_num_threads(cfg.torch_threads)
    device = pick_device(cfg.device)
    return device, use_bf16(cfg.train_precision, device)


def resolve_policy(paths: RunPaths, policy: str, key: str = "collect.policies") -> Path:
    """A stage name of this run (base, sft, ppo) or a checkpoint path; `key` is the config key or flag it came from."""
    if policy in ("base", "sft", "ppo"):
        return require_checkpoint(paths.model(policy), f"{key} '{policy}'", weights=True)
    return require_checkpoint(policy, key, weights=True)


# ---------------------------------------------------------------------------------------------- data
def stage_data(cfg: RunConfig, task: Task, out_dir: Path) -> dict[str, Any]:
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
def stage_pretrain(cfg: RunConfig, paths: RunPaths, task: Task) -> dict[str, Any]:
    """Train the BPE tokenizer and pretrain the demo base model on the task's corpus."""
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
    out = paths.model("base")
    docs = {split: read_data(cfg, paths.corpus(split), Document) for split in ("train", "heldout")}  # before any write
    tokenizer = train_tokenizer(task.tokenizer_corpus(), cfg.model.vocab_size, out)
    model = build_causal_lm(cfg.model.preset, tokenizer, cfg.model.max_position_embeddings, seed=cfg.seed)

    def stream(split: str) -> np.ndarray:
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
def demonstration_examples(tokenizer: PreTrainedTokenizerBase, demos: Sequence[Demonstration]
                           ) -> list[tuple[list[int], list[int]]]:
    return [(encode_prompt(tokenizer, d.prompt), encode_response(tokenizer, d.response)) for d in demos]


def stage_sft(cfg: RunConfig, paths: RunPaths, model_path: Path, data_path: Path, out: Path) -> dict[str, Any]:
    """Fine-tune `model_path` on the demonstrations in `data_path`; save the best epoch to `out`."""
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
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
def comparison_groups(tokenizer: PreTrainedTokenizerBase, comparisons: Sequence[Comparison]
                      ) -> list[tuple[list[list[int]], list[int]]]:
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
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
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

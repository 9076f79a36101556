"""The pipeline's stages, each a function of the config and the run's paths.

Each stage reads its inputs from files, writes its outputs as files (datasets, HF checkpoints,
metrics) and returns a summary dict that is also saved to `summaries/<stage>.json`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from configs.schema import RunConfig
from contracts.dataio import read_records, write_records
from contracts.formatting import encode_prompt, encode_response
from contracts.records import Comparison, Demonstration, Document, Prompt
from orchestration.paths import RunPaths

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
    records, _ = read_records(path, record_type, on_bad_rows=cfg.data.on_bad_rows,
                              max_prompt_chars=cfg.data.max_prompt_chars)
    return records


def _setup_torch(cfg: RunConfig):
    import torch

    from learners.models import pick_device
    from learners.training import use_bf16

    torch.set_num_threads(cfg.torch_threads)
    device = pick_device(cfg.device)
    return device, use_bf16(cfg.train_precision, device)


# ---------------------------------------------------------------------------------------------- data
def stage_data(cfg: RunConfig, task, out_dir: Path) -> dict[str, Any]:
    """Write the task's prompts (3 splits), demonstrations, seed comparisons and pretraining corpus."""
    from tasks.demo import demo_comparisons

    t0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        prompts = task.prompts(split)
        write_records(out_dir / f"prompts_{split}.jsonl", prompts, Prompt)
        counts[f"prompts_{split}"] = len(prompts)
    demos = task.demonstrations()
    write_records(out_dir / "demonstrations.jsonl", demos, Demonstration)
    comparisons = demo_comparisons(task, n=min(1000, cfg.task.n_train_prompts), k=cfg.collect.k, seed=cfg.seed)
    write_records(out_dir / "demo_comparisons.jsonl", comparisons, Comparison)
    for split in ("train", "heldout"):
        docs = [Document(f"{split}-{i:06d}", text) for i, text in enumerate(task.pretraining_corpus(split))]
        write_records(out_dir / f"corpus_{split}.jsonl", docs, Document)
        counts[f"corpus_{split}"] = len(docs)
    counts.update(demonstrations=len(demos), demo_comparisons=len(comparisons), seconds=time.time() - t0)
    return counts


# ---------------------------------------------------------------------------------------------- pretrain
def stage_pretrain(cfg: RunConfig, paths: RunPaths, task) -> dict[str, Any]:
    """Train the BPE tokenizer and pretrain the demo base model on the task's corpus."""
    from learners.models import build_causal_lm, count_parameters, train_tokenizer
    from learners.pretrain import pack_documents, pretrain
    from learners.training import MetricsLog

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    out = paths.model("base")
    tokenizer = train_tokenizer(task.tokenizer_corpus(), cfg.model.vocab_size, out)
    model = build_causal_lm(cfg.model.preset, tokenizer, cfg.model.max_position_embeddings, seed=cfg.seed)

    def stream(split):
        docs = _read(cfg, paths.corpus(split), Document)
        ids = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
        return pack_documents(ids, tokenizer.bos_token_id, tokenizer.eos_token_id)

    p = cfg.pretrain
    metrics = pretrain(
        model, stream("train"), stream("heldout"), steps=p.steps, batch_size=p.batch_size, seq_len=p.seq_len,
        lr=p.lr, warmup_steps=p.warmup_steps, weight_decay=p.weight_decay, device=device, bf16=bf16,
        seed=cfg.seed, log=MetricsLog(paths.metrics, "pretrain"),
    )
    model.save_pretrained(out)
    return {"parameters": count_parameters(model), "heldout_loss": metrics["heldout_loss"],
            "bf16": bf16, "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------- sft
def demonstration_examples(tokenizer, demos) -> list[tuple[list[int], list[int]]]:
    return [(encode_prompt(tokenizer, d.prompt), encode_response(tokenizer, d.response)) for d in demos]


def stage_sft(cfg: RunConfig, paths: RunPaths, model_path: Path, data_path: Path, out: Path) -> dict[str, Any]:
    """Fine-tune `model_path` on the demonstrations in `data_path`; save the best epoch to `out`."""
    from learners.models import load_causal_lm, load_tokenizer
    from learners.sft import train_sft
    from learners.training import MetricsLog

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    model = load_causal_lm(model_path, cfg.device, cfg.trust_remote_code)
    examples = demonstration_examples(tokenizer, _read(cfg, data_path, Demonstration))
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(examples))
    n_val = max(1, int(round(cfg.sft.val_fraction * len(examples))))
    if len(examples) - n_val < 1:
        raise ValueError(f"{data_path}: {len(examples)} demonstrations are too few to hold out a validation split")
    val, train = [examples[i] for i in idx[:n_val]], [examples[i] for i in idx[n_val:]]
    s = cfg.sft
    metrics = train_sft(
        model, train, val, pad_id=tokenizer.pad_token_id, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
        grad_clip=s.grad_clip, residual_dropout=s.residual_dropout, device=device, bf16=bf16, seed=cfg.seed,
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


def stage_rm(cfg: RunConfig, paths: RunPaths, sft_path: Path, data_path: Path, out: Path,
             demos_path: Path | None = None) -> dict[str, Any]:
    """Train the reward model from the SFT checkpoint on ranked comparisons; normalise on demonstrations."""
    from learners.models import load_tokenizer
    from learners.reward_model import normalise_rewards, reward_model_from_policy, train_reward_model
    from learners.training import MetricsLog

    t0 = time.time()
    device, bf16 = _setup_torch(cfg)
    tokenizer = load_tokenizer(sft_path, cfg.trust_remote_code)
    model = reward_model_from_policy(sft_path, cfg.device, cfg.trust_remote_code)
    comparisons = _read(cfg, data_path, Comparison)
    groups = comparison_groups(tokenizer, comparisons)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(groups))
    n_val = max(1, int(round(cfg.rm.val_fraction * len(groups))))
    val, train = [groups[i] for i in idx[:n_val]], [groups[i] for i in idx[n_val:]]
    r = cfg.rm
    metrics = train_reward_model(
        model, train, val, pad_id=tokenizer.pad_token_id, epochs=r.epochs, batch_prompts=r.batch_prompts, lr=r.lr,
        grad_clip=r.grad_clip, device=device, bf16=bf16, seed=cfg.seed, log=MetricsLog(paths.metrics, "rm"),
    )
    shift = None
    if demos_path is not None and demos_path.exists():
        demos = _read(cfg, demos_path, Demonstration)
        seqs = [p + r for p, r in demonstration_examples(tokenizer, demos)]
        shift = normalise_rewards(model, seqs, tokenizer.pad_token_id, device)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {**metrics, "train_prompts": len(train), "val_prompts": len(val), "normalisation_shift": shift,
            "seconds": time.time() - t0}

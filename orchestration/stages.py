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
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from raylhf.configs.schema import RunConfig
from raylhf.contracts.dataio import write_records
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.protocols import Task
from raylhf.contracts.records import Comparison, Demonstration, Document, Prompt
from raylhf.learners.models import (
    build_causal_lm,
    checkpoint_dtype,
    count_parameters,
    load_causal_lm,
    pick_device,
    save_pretrained_as,
    train_tokenizer,
)
from raylhf.learners.pretrain import pack_documents, pretrain
from raylhf.learners.reward_model import (
    RankedGroup,
    load_reward_model,
    normalise_rewards,
    reward_model_from_policy,
    train_reward_model,
)
from raylhf.learners.sft import train_sft
from raylhf.learners.training import MetricsLog, use_bf16
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import (
    Skipped,
    format_and_context,
    read_comparisons,
    read_data,
    read_demonstrations,
    split_sizes,
)
from raylhf.orchestration.provenance import provenance
from raylhf.orchestration.rounds import SEED_SOURCE, tagged

if TYPE_CHECKING:  # pragma: no cover  (annotations only: transformers takes a second to import)
    from transformers import PreTrainedModel

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
    """Write the task's prompts (3 splits), demonstrations, seed comparisons and pretraining corpus. A file
    that exists is kept as it is (`kept`): your data is never written over, and an interrupted stage finishes
    the files it had not written."""
    t0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {"kept": []}

    def write(name: str, rows: Callable[[], list], record_type: type) -> None:
        path = out_dir / name
        if path.exists():
            counts["kept"].append(name)
            return
        records = rows()
        write_records(path, records, record_type)
        counts[name.removesuffix(".jsonl")] = len(records)

    for split in SPLITS:
        write(f"prompts_{split}.jsonl", lambda: task.prompts(split), Prompt)
    write("demonstrations.jsonl", task.demonstrations, Demonstration)
    write("demo_comparisons.jsonl", lambda: tagged(task.seed_comparisons(
        n=min(1000, cfg.task.n_train_prompts), k=cfg.collect.k, seed=cfg.seed), 0, SEED_SOURCE), Comparison)
    for split in ("train", "heldout"):
        write(f"corpus_{split}.jsonl", lambda: [Document(f"{split}-{i:06d}", text)
                                                for i, text in enumerate(task.pretraining_corpus(split))], Document)
    counts["seconds"] = time.time() - t0
    return counts


# ---------------------------------------------------------------------------------------------- pretrain
def stage_pretrain(cfg: RunConfig, paths: RunPaths, task: Task) -> dict[str, Any]:
    """Train the BPE tokenizer (with the task's chat template) and pretrain the demo base model on the task's
    corpus."""
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
    out = paths.model("base")
    docs = {split: read_data(cfg, paths.corpus(split), Document) for split in ("train", "heldout")}  # before any write
    tokenizer = train_tokenizer(task.tokenizer_corpus(), cfg.model.vocab_size, out,
                                chat_template=getattr(task, "chat_template", None))
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
            "bf16": bf16, "seconds": time.time() - t0,
            **provenance(paths, checkpoint=out, inputs={split: paths.corpus(split) for split in ("train", "heldout")})}


# ---------------------------------------------------------------------------------------------- sft
def demonstration_examples(fmt: PromptFormat, demos: Sequence[Demonstration]) -> list[tuple[list[int], list[int]]]:
    return [(fmt.prompt_ids(d), fmt.response_ids(d.response)) for d in demos]


def save_policy(model: PreTrainedModel, fmt: PromptFormat, out: Path, dtype: torch.dtype = torch.float32) -> None:
    """Save a policy so it serves as trained: in `dtype` (its input's), with its tokenizer and the chat template
    prompts were rendered with, and a generation config that stops where its responses ended (end-of-turn and
    EOS)."""
    stops = [*fmt.stop_ids]
    eos = model.generation_config.eos_token_id
    for e in (eos if isinstance(eos, list) else [eos]):
        if e is not None and e not in stops:
            stops.append(e)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    save_pretrained_as(model, out, dtype)
    save_tokenizer(fmt, out)


def save_tokenizer(fmt: PromptFormat, out: Path) -> None:
    """The tokenizer, carrying the chat template the model was trained under (also one read from a file)."""
    if fmt.template is not None:
        fmt.tokenizer.chat_template = fmt.template
    fmt.tokenizer.save_pretrained(out)


def stage_sft(cfg: RunConfig, paths: RunPaths, model_path: Path, data_path: Path, out: Path) -> dict[str, Any]:
    """Fine-tune `model_path` on the demonstrations in `data_path`; save the best epoch to `out`."""
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
    fmt, context = format_and_context(cfg, model_path, "--model")
    skipped: Skipped = {}
    demos = read_demonstrations(cfg, data_path, fmt, context, model_path, skipped)
    n_val, _ = split_sizes(len(demos), cfg.sft.val_fraction, data_path, "demonstrations", "sft.val_fraction")
    # Trained in float32 (bf16 is autocast only), saved in the dtype it came in.
    dtype = checkpoint_dtype(model_path, cfg.trust_remote_code)
    model = load_causal_lm(model_path, cfg.device, cfg.trust_remote_code, key="--model", dtype=torch.float32)
    examples = demonstration_examples(fmt, demos)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(examples))
    val, train = [examples[i] for i in idx[:n_val]], [examples[i] for i in idx[n_val:]]
    metrics = train_sft(
        cfg.sft, model, train, val, pad_id=fmt.tokenizer.pad_token_id, device=device, bf16=bf16, seed=cfg.seed,
        log=MetricsLog(paths.metrics, "sft"),
    )
    save_policy(model, fmt, out, dtype)
    return {**metrics, "train_examples": len(train), "val_examples": len(val), "skipped_rows": skipped,
            "seconds": time.time() - t0, **provenance(paths, checkpoint=out, inputs={"model": model_path, "data": data_path})}


# ---------------------------------------------------------------------------------------------- rm
def comparison_groups(fmt: PromptFormat, comparisons: Sequence[Comparison]) -> list[RankedGroup]:
    """Each comparison as the reward model trains on it: its K token sequences, ranking and ties."""
    groups = []
    for c in comparisons:
        prompt_ids = fmt.prompt_ids(c)
        groups.append(RankedGroup([prompt_ids + fmt.response_ids(r) for r in c.responses], list(c.ranking),
                                  None if c.tied is None else list(c.tied)))
    return groups


def stage_rm(cfg: RunConfig, paths: RunPaths, sft_path: Path, data_path: Path | Sequence[Path], out: Path,
             demos_path: Path | None = None, init: Path | None = None,
             keep: Callable[[Comparison], bool] | None = None, keep_key: str = "",
             log_as: str = "rm") -> dict[str, Any]:
    """Train the reward model on ranked comparisons (one file, or the files of every round so far) and
    normalise it on demonstrations. It starts as a fresh scalar head on the SFT checkpoint, or from the
    reward model `init` (a warm start).

    With `keep`, only the comparisons it accepts are trained and validated on (the held-out judge's share of
    the prompts is split off this way, `raylhf.orchestration.judge`); `keep_key` is the config key that
    decides the split, named when too few are left. Metrics rows are logged as stage `log_as`."""
    t0 = time.time()
    device, bf16 = setup_torch(cfg)
    fmt, context = format_and_context(cfg, sft_path, "--model")
    tokenizer = fmt.tokenizer
    files = [data_path] if isinstance(data_path, (str, Path)) else list(data_path)
    skipped: Skipped = {}
    comparisons = [c for f in files for c in read_comparisons(cfg, f, fmt, context, sft_path, skipped)]
    read = len(comparisons)
    if keep is not None:
        comparisons = [c for c in comparisons if keep(c)]
    what = f"comparisons (after the split by {keep_key})" if keep is not None and keep_key else "comparisons"
    n_val, _ = split_sizes(len(comparisons), cfg.rm.val_fraction, files[-1], what, "rm.val_fraction")
    demos = None
    if demos_path is not None and demos_path.exists():
        demos = read_demonstrations(cfg, demos_path, fmt, context, sft_path, skipped)
    dtype = checkpoint_dtype(init or sft_path, cfg.trust_remote_code)  # trained in float32, saved in this
    if init is None:
        model = reward_model_from_policy(sft_path, cfg.device, cfg.trust_remote_code, key="--model",
                                         dtype=torch.float32)
    else:
        model = load_reward_model(init, cfg.device, cfg.trust_remote_code, key="iterate.rm_init", dtype=torch.float32)
    groups = comparison_groups(fmt, comparisons)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(groups))
    val, train = [groups[i] for i in idx[:n_val]], [groups[i] for i in idx[n_val:]]
    metrics = train_reward_model(
        cfg.rm, model, train, val, pad_id=tokenizer.pad_token_id, device=device, bf16=bf16, seed=cfg.seed,
        log=MetricsLog(paths.metrics, log_as),
    )
    shift = None
    if demos is not None:
        seqs = [p + r for p, r in demonstration_examples(fmt, demos)]
        shift = normalise_rewards(model, seqs, tokenizer.pad_token_id, device)
    save_pretrained_as(model, out, dtype)
    save_tokenizer(fmt, out)
    by_round = collections.Counter(c.round for c in comparisons)
    by_people = [c for c in comparisons if c.labeler]
    return {**metrics, "train_prompts": len(train), "val_prompts": len(val), "normalisation_shift": shift,
            "comparisons_by_round": {str(r): by_round[r] for r in sorted(by_round)},
            # rankings by people (`collect.labeler: human`), and those with ties (their tied pairs not trained on)
            **({"ranked_by_people": len(by_people), "with_ties": sum(any(c.tied or []) for c in by_people)}
               if by_people else {}),
            **({"comparisons_left_out": read - len(comparisons)} if keep is not None else {}),
            "init": str(init or sft_path), "skipped_rows": skipped, "seconds": time.time() - t0,
            **provenance(paths, checkpoint=out, inputs={"model": sft_path, "data": files, "demonstrations": demos_path,
                                                        "init": init})}

"""Each stage's inputs, checked before the stage starts anything or writes a file.

A `check_*_inputs` function reads what its stage will read and raises on the first bad input: a
`CheckpointError` (a config error to the CLI) naming the key or flag for a checkpoint path that is not a
local Hugging Face checkpoint, a `ConfigError` naming the key for settings that do not fit together, a
`DataError` naming the file (and line) for a missing or empty dataset, a repeated prompt id, or a
sequence longer than the model's context. Under `data.on_bad_rows: skip` bad rows are counted and
dropped instead, and only a file left without a valid row stops the stage. The CLI runs the check of a
command before it creates the run directory, and the stages read their data through the same readers,
so `raylhf run` refuses bad input the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, TypeVar

from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import RunConfig
from raylhf.contracts.dataio import DataError, read_records
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.records import Comparison, Demonstration, Document, Prompt
from raylhf.learners.models import context_length, load_tokenizer
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.storage import is_remote_uri, local_output_dir

R = TypeVar("R")
# Rows a stage skipped under `data.on_bad_rows: skip`: file -> reason -> count (goes into its summary).
Skipped = dict[str, dict[str, int]]


def read_data(cfg: RunConfig, path: str | os.PathLike, record_type: type[R],
              check: Callable[[R], str | None] | None = None, skipped: Skipped | None = None) -> list[R]:
    """Rows of a dataset under the run's bad-row policy (`data.on_bad_rows`, `data.max_prompt_chars`) and column
    names (`data.columns`); what was skipped is added to `skipped` when given."""
    records, report = read_records(path, record_type, on_bad_rows=cfg.data.on_bad_rows,
                                   max_prompt_chars=cfg.data.max_prompt_chars, check=check,
                                   columns=cfg.data.columns.mapping())
    if skipped is not None and report.n_bad:
        counts = skipped.setdefault(str(path), {})
        for reason, n in report.by_reason.items():
            counts[reason] = counts.get(reason, 0) + n
    return records


# ---------------------------------------------------------------------------------------------- context
def _context(context: int, checkpoint: str | os.PathLike) -> str:
    return f"the model's context of {context} tokens (max_position_embeddings of {checkpoint})"


def _prompt_length(fmt: PromptFormat, record) -> tuple[int | None, str | None]:
    """(prompt tokens, None), or (None, why the prompt cannot be rendered)."""
    try:
        return len(fmt.prompt_ids(record)), None
    except ValueError as e:
        return None, str(e)


def demonstration_fits(fmt: PromptFormat, context: int | None, checkpoint: str | os.PathLike
                       ) -> Callable[[Demonstration], str | None]:
    """A row check: prompt + response tokens within the context of the model trained on them."""
    def check(d: Demonstration) -> str | None:
        p, why = _prompt_length(fmt, d)
        if why is not None:
            return why
        n = p + len(fmt.response_ids(d.response))
        if context is not None and n > context:
            return f"field 'response': prompt + response are {n} tokens, more than {_context(context, checkpoint)}"
        return None
    return check


def comparison_fits(fmt: PromptFormat, context: int | None, checkpoint: str | os.PathLike
                    ) -> Callable[[Comparison], str | None]:
    """A row check: prompt + each response within the reward model's context."""
    def check(c: Comparison) -> str | None:
        p, why = _prompt_length(fmt, c)
        if why is not None or context is None:
            return why
        for i, r in enumerate(c.responses):
            n = p + len(fmt.response_ids(r))
            if n > context:
                return (f"field 'responses': prompt + response {i} are {n} tokens, more than "
                        f"{_context(context, checkpoint)}")
        return None
    return check


def prompt_fits(fmt: PromptFormat, context: int | None, max_new_tokens: int,
                checkpoint: str | os.PathLike) -> Callable[[Prompt], str | None]:
    """A row check: the prompt leaves room for `generation.max_new_tokens` in the policy's context."""
    def check(p: Prompt) -> str | None:
        n, why = _prompt_length(fmt, p)
        if why is not None:
            return why
        if context is not None and n + max_new_tokens > context:
            return (f"field 'prompt': {n} tokens; with generation.max_new_tokens = {max_new_tokens} that is more "
                    f"than {_context(context, checkpoint)}")
        return None
    return check


# ---------------------------------------------------------------------------------------------- readers
def load_format(cfg: RunConfig, checkpoint: str | os.PathLike, *, key: str | None = None) -> PromptFormat:
    """The tokenizer of `checkpoint` under the run's `data.chat_template` and `data.input_template`."""
    tokenizer = load_tokenizer(checkpoint, cfg.trust_remote_code, key=key)
    try:
        return PromptFormat(tokenizer, cfg.data.chat_template, cfg.data.input_template)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None


def format_and_context(cfg: RunConfig, checkpoint: str | os.PathLike, key: str) -> tuple[PromptFormat, int | None]:
    """How prompts are rendered for the model in `checkpoint` and its context length."""
    require_checkpoint(checkpoint, key, weights=True, tokenizer=True)
    fmt = load_format(cfg, checkpoint, key=key)
    return fmt, context_length(checkpoint, cfg.trust_remote_code, key=key)


def read_demonstrations(cfg: RunConfig, path: str | os.PathLike, fmt: PromptFormat, context: int | None,
                        checkpoint: str | os.PathLike, skipped: Skipped | None = None) -> list[Demonstration]:
    return read_data(cfg, path, Demonstration, demonstration_fits(fmt, context, checkpoint), skipped)


def read_comparisons(cfg: RunConfig, path: str | os.PathLike, fmt: PromptFormat, context: int | None,
                     checkpoint: str | os.PathLike, skipped: Skipped | None = None) -> list[Comparison]:
    return read_data(cfg, path, Comparison, comparison_fits(fmt, context, checkpoint), skipped)


def read_prompts(cfg: RunConfig, path: str | os.PathLike, fmt: PromptFormat | None = None,
                 context: int | None = None, checkpoint: str | os.PathLike = "",
                 skipped: Skipped | None = None) -> list[Prompt]:
    """Prompts with unique ids; with a format, only those that leave room for a response in the context (the
    generators' `generation.max_model_len` when that is shorter)."""
    limits = [n for n in (context, cfg.generation.max_model_len) if n is not None]
    context = min(limits) if limits else None
    check = prompt_fits(fmt, context, cfg.generation.max_new_tokens, checkpoint) if fmt else None
    return read_data(cfg, path, Prompt, check, skipped)


def split_sizes(n: int, fraction: float, path: str | os.PathLike, what: str, key: str) -> tuple[int, int]:
    """(validation, training) sizes of `n` examples with `fraction` held out; at least one of each."""
    n_val = max(1, int(round(fraction * n)))
    if n - n_val < 1:
        raise DataError(path, "", f"{n} {what} are too few to hold out a validation split ({key} = {fraction}) "
                                  "and keep one to train on")
    return n_val, n - n_val


# ---------------------------------------------------------------------------------------------- checks
def check_pretrain_inputs(cfg: RunConfig, paths: RunPaths) -> None:
    """The pretraining corpus (train and held-out splits) exists and has documents."""
    for split in ("train", "heldout"):
        read_data(cfg, paths.corpus(split), Document)


def check_sft_inputs(cfg: RunConfig, model_path: Path, data_path: Path, model_key: str = "--model") -> None:
    """A base checkpoint with a tokenizer; demonstrations that fit its context, enough to split off validation."""
    fmt, context = format_and_context(cfg, model_path, model_key)
    demos = read_demonstrations(cfg, data_path, fmt, context, model_path)
    split_sizes(len(demos), cfg.sft.val_fraction, data_path, "demonstrations", "sft.val_fraction")


def check_rm_inputs(cfg: RunConfig, sft_path: Path, data_path: Path, demos_path: Path | None,
                    model_key: str = "--model") -> None:
    """An SFT checkpoint with a tokenizer; comparisons (and demonstrations for the normalisation, when
    given) that fit its context, enough comparisons to split off validation."""
    fmt, context = format_and_context(cfg, sft_path, model_key)
    comparisons = read_comparisons(cfg, data_path, fmt, context, sft_path)
    split_sizes(len(comparisons), cfg.rm.val_fraction, data_path, "comparisons", "rm.val_fraction")
    if demos_path is not None:
        read_demonstrations(cfg, demos_path, fmt, context, sft_path)


def check_collect_inputs(cfg: RunConfig, policies: dict[str, Path], prompts_path: Path,
                         seed_comparisons: Path | None) -> None:
    """Policies are checked where they are named (`resolve_policy`); here the prompts fit every policy's context."""
    for name, path in policies.items():
        fmt, context = format_and_context(cfg, path, f"policy '{name}'")
        read_prompts(cfg, prompts_path, fmt, context, path)
    if seed_comparisons is not None and seed_comparisons.exists():
        read_data(cfg, seed_comparisons, Comparison)


def check_rm_eval_inputs(cfg: RunConfig, paths: RunPaths, sft_path: Path, rm_path: Path) -> None:
    """SFT and reward-model checkpoints; held-out and generalization prompts that fit the SFT context."""
    if cfg.task.name == "none":
        raise ConfigError("task.name: rm-eval ranks held-out samples with the task's labeler and there is no task; "
                          "the reward model's accuracy on held-out comparisons is in the rm stage's summary")
    fmt, context = format_and_context(cfg, sft_path, "--sft")
    require_checkpoint(rm_path, "--rm", weights=True)
    for split in ("heldout", "generalization"):
        read_prompts(cfg, paths.prompts(split), fmt, context, sft_path)


def check_eval_inputs(cfg: RunConfig, paths: RunPaths, policies: dict[str, Path], rm_path: Path | None,
                      rm_key: str = "--rm") -> None:
    """Every policy checkpoint (and the reward model, when scoring); prompts that fit each policy; the
    held-out pretraining corpus."""
    if rm_path is not None:
        require_checkpoint(rm_path, rm_key, weights=True)
    for name, path in policies.items():
        fmt, context = format_and_context(cfg, path, f"policy '{name}'")
        for split in ("heldout", "generalization"):  # your data has no generalization split
            if split == "heldout" or paths.prompts(split).exists():
                read_prompts(cfg, paths.prompts(split), fmt, context, path)
    if cfg.task.name != "none" or paths.provided("corpus_heldout") is not None:  # LM loss only when there is text
        read_data(cfg, paths.corpus("heldout"), Document)


def check_ppo_inputs(cfg: RunConfig, paths: RunPaths, policy_path: str | os.PathLike,
                     rm_path: str | os.PathLike) -> None:
    """Everything `raylhf ppo` reads, checked before Ray starts.

    The policy (`--policy`) and reward model (`--rm`, also the value function's start) are local HF
    checkpoints, as are the `reward.*_path` overrides that are in use; the train prompts exist, have
    unique ids and leave room for `generation.max_new_tokens` in the policy's context (under `skip`, at
    least one does); the held-out prompts exist when `ppo.eval_every > 0`; the pretraining corpus exists
    when `ppo.ptx_coef > 0`.
    """
    fmt, context = format_and_context(cfg, policy_path, "--policy")
    require_checkpoint(rm_path, "--rm", weights=True)
    r = cfg.reward
    if r.rm_path is not None and any(s.kind == "rm" for s in r.sources):
        require_checkpoint(r.rm_path, "reward.rm_path", weights=True)
    if r.ref_path is not None and r.ref_logprobs:
        require_checkpoint(r.ref_path, "reward.ref_path", weights=True)
    if r.tokenizer_path is not None and any(s.kind == "function" for s in r.sources):
        require_checkpoint(r.tokenizer_path, "reward.tokenizer_path", model=False, tokenizer=True)
    read_prompts(cfg, paths.prompts("train"), fmt, context, policy_path)
    if cfg.ppo.eval_every > 0:
        read_prompts(cfg, paths.prompts("heldout"), fmt, context, policy_path)
    if cfg.ppo.ptx_coef > 0:
        read_data(cfg, paths.corpus("train"), Document)


def check_run_inputs(cfg: RunConfig, paths: RunPaths) -> None:
    """Your inputs to `raylhf run` (`data.*`, `model.path`, `reward.rm_path`), all read before anything is
    written: checkpoints are local HF checkpoints, every row of every file is valid (and fits the model's
    context when the model is yours), and the reward model reads text with the policy's tokenizer."""
    base = paths.provided("model_base")
    fmt, context = format_and_context(cfg, base, "model.path") if base is not None else (None, None)
    rm = paths.provided("model_rm")
    if rm is not None:
        require_checkpoint(rm, "reward.rm_path", weights=True, tokenizer=True)
        if base is not None:
            check_same_tokenizer(cfg, base, "model.path", rm, "reward.rm_path")
    for split in ("train", "heldout"):
        if paths.provided(f"prompts_{split}") is not None:
            read_prompts(cfg, paths.prompts(split), fmt, context, base or "")
        if paths.provided(f"corpus_{split}") is not None:
            read_data(cfg, paths.corpus(split), Document)
    if paths.provided("demonstrations") is not None:
        read_data(cfg, paths.demonstrations, Demonstration,
                  demonstration_fits(fmt, context, base) if fmt is not None else None)
    if paths.provided("comparisons") is not None:
        read_data(cfg, paths.comparisons, Comparison, comparison_fits(fmt, context, base) if fmt is not None else None)


def check_same_tokenizer(cfg: RunConfig, a: str | os.PathLike, key_a: str, b: str | os.PathLike, key_b: str) -> None:
    """The policy and the reward model must read the same token ids: the scorers score the policy's ids."""
    ta, tb = (load_tokenizer(p, cfg.trust_remote_code, key=k) for p, k in ((a, key_a), (b, key_b)))
    if ta.get_vocab() != tb.get_vocab() or (ta.bos_token_id, ta.eos_token_id) != (tb.bos_token_id, tb.eos_token_id):
        raise ConfigError(f"{key_b}: the reward model's tokenizer ({b}) is not the policy's ({key_a}: {a}); the "
                          "reward model scores the policy's token ids, so both must use one tokenizer")


def check_iterate_prompts(cfg: RunConfig) -> None:
    """Each iteration round ranks `iterate.n_prompts` prompts no earlier round ranked: the training split must
    hold them all, after the first round's `collect.n_prompts`. Checked before a run with rounds starts."""
    it, n_train = cfg.iterate, cfg.task.n_train_prompts
    need = min(cfg.collect.n_prompts, n_train) + it.rounds * it.n_prompts
    if it.rounds and need > n_train:
        raise ConfigError(f"iterate.n_prompts: {it.rounds} rounds x {it.n_prompts} fresh prompts after the first "
                          f"round's collect.n_prompts = {cfg.collect.n_prompts} need {need} training prompts, but "
                          f"task.n_train_prompts = {n_train}; lower iterate.n_prompts, iterate.rounds or "
                          "collect.n_prompts, or raise task.n_train_prompts")


def policy_prompts(cfg: RunConfig, path: str | os.PathLike, fmt: PromptFormat, policy_path: str | os.PathLike,
                   skipped: Skipped | None = None) -> list[Prompt]:
    """The prompts of `path` that a PPO or sampling stage can use with the policy in `policy_path`."""
    return read_prompts(cfg, path, fmt, context_length(policy_path, cfg.trust_remote_code), policy_path, skipped)


def submitted_job() -> dict | None:
    """The job config when this process is the entry point of a submitted Ray job, else None."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return config if (config.get("metadata") or {}).get("job_submission_id") else None


def check_output_dir(cfg: RunConfig) -> None:
    """A submitted Ray job runs in a private copy of its uploaded working directory, deleted with the job:
    a relative `output_dir` there would lose the run. Refuse it, naming the key and what to do."""
    job = submitted_job()
    if job is None or is_remote_uri(cfg.output_dir) or local_output_dir(cfg.output_dir).is_absolute():
        return
    job_id = job["metadata"]["job_submission_id"]
    raise ConfigError(
        f"output_dir: {cfg.output_dir!r} is relative, and this is Ray job {job_id}, which runs in a private copy "
        f"of its working directory: the run would be lost with it. Pass an absolute path that every node can "
        f"reach, e.g. output_dir=$PWD/runs on a one-machine cluster, a shared file system's path, or a storage URI "
        f"such as s3://bucket/runs")


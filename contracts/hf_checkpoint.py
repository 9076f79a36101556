"""Where models and tokenizers are loaded from: a local Hugging Face checkpoint directory, never the Hub.

Every model or tokenizer load goes through `require_checkpoint` first (and passes `local_files_only=True`
to transformers), so a mistyped path fails at once with the config key or command-line flag it came from,
instead of turning into a download attempt from the Hugging Face Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


class CheckpointError(ValueError):
    """A path that is not a local Hugging Face checkpoint; the message names the key or flag it came from."""


def checkpoint_problem(path: str | os.PathLike, *, model: bool = True, weights: bool = False,
                       tokenizer: bool = False) -> str | None:
    """Why `path` is not a local HF checkpoint directory, or None when it is one. The directory holds a
    model config (`config.json`) unless `model` is False (a tokenizer alone), and `*.safetensors` weights
    and a tokenizer when `weights` and `tokenizer` ask for them."""
    p = Path(path).expanduser()
    if not p.exists():
        return f"{path} does not exist (expected a local Hugging Face checkpoint directory)"
    if not p.is_dir():
        return f"not a Hugging Face checkpoint: {path} is a file, not a directory"
    if model and not (p / "config.json").is_file():
        return f"not a Hugging Face checkpoint: {path} has no config.json"
    if weights and not any(p.glob("*.safetensors")):
        return f"not a Hugging Face checkpoint: {path} has no *.safetensors weights"
    if tokenizer and not any((p / name).is_file() for name in TOKENIZER_FILES):
        return f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)})"
    return None


def require_checkpoint(path: str | os.PathLike, key: str | None = None, *, model: bool = True,
                       weights: bool = False, tokenizer: bool = False) -> Path:
    """`path` as a Path if it is a local HF checkpoint directory, else `CheckpointError("<key>: <why>")`.

    `key` is the config key or command-line flag the path came from (`reward.rm_path`, `--model`).
    """
    problem = checkpoint_problem(path, model=model, weights=weights, tokenizer=tokenizer)
    if problem is not None:
        raise CheckpointError(f"{key}: {problem}" if key else problem)
    return Path(path).expanduser()

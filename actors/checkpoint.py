"""What an engine expects of a weight snapshot, read from the HF checkpoint it was started from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.snapshot import named_checkpoint_tensors


def read_hf_config(checkpoint: str | os.PathLike) -> dict:
    return json.loads((require_checkpoint(checkpoint) / "config.json").read_text())


def eos_token_ids(checkpoint: str | os.PathLike) -> tuple[int, ...]:
    """EOS ids of a checkpoint; generation_config.json wins over config.json, as in transformers."""
    eos = None
    gen_path = Path(checkpoint) / "generation_config.json"
    if gen_path.exists():
        eos = json.loads(gen_path.read_text()).get("eos_token_id")
    if eos is None:
        eos = read_hf_config(checkpoint).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def checkpoint_signature(checkpoint: str | os.PathLike, dtype: str,
                         trust_remote_code: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor a snapshot for a model started from `checkpoint` must carry.

    Exactly what the learner publishes (`named_checkpoint_tensors` of the transformers model) for this
    architecture: the model is built from the checkpoint's config on the meta device (no memory, no
    weights read), so a tied LM head is carried once under the embedding's name, non-persistent buffers
    (rotary caches, GPT-2's attention masks) are left out, and names are transformers' own even where the
    files use an older layout (GPT-2 checkpoints saved without the `transformer.` prefix). Floating-point
    tensors must come in `dtype`, the engine's compute dtype; others in their own.
    """
    # deferred: transformers takes seconds to import (already paid where an engine runs)
    from transformers import AutoConfig, AutoModelForCausalLM

    path = str(require_checkpoint(checkpoint, weights=True))
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return [(name, tuple(t.shape), dtype if t.is_floating_point() else str(t.dtype).removeprefix("torch."))
            for name, t in named_checkpoint_tensors(model)]

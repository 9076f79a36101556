"""What an engine expects of a weight snapshot, read from the HF checkpoint it was started from."""

from __future__ import annotations

import json
import os
from pathlib import Path

from raylhf.contracts.hf_checkpoint import require_checkpoint


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


def checkpoint_signature(checkpoint: str | os.PathLike, dtype: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor a snapshot for a model started from `checkpoint` must carry.

    Names and shapes come from the safetensors headers (nothing is loaded); `dtype` is the engine's
    compute dtype, which the snapshot must already have. A tied `lm_head.weight` is left out (the
    engine loads the embedding once) as are rotary caches some older checkpoints store.
    """
    from safetensors import safe_open

    files = sorted(require_checkpoint(checkpoint, weights=True).glob("*.safetensors"))
    tied = bool(read_hf_config(checkpoint).get("tie_word_embeddings", False))
    signature = []
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if (tied and name == "lm_head.weight") or name.endswith("rotary_emb.inv_freq"):
                    continue
                signature.append((name, tuple(f.get_slice(name).get_shape()), dtype))
    return signature

"""Building and loading models.

The tiny demo models: `train_tokenizer` (a byte-level BPE tokenizer trained on a corpus) and
`build_causal_lm` (a Llama-architecture LM of one of the `PRESETS` `Architecture`s; `count_parameters`
sizes it). Both are saved with `save_pretrained`, so transformers and vLLM load them from a local path.
head_dim is 64 because vLLM's CPU attention rejects 16.

Loading any HF checkpoint: `load_tokenizer`, `load_tokenizer_if_present`, `load_causal_lm`,
`context_length`, `is_checkpoint`; each load checks the path with
`raylhf.contracts.hf_checkpoint.require_checkpoint` first (a `CheckpointError` naming the config key or flag)
and never reaches the Hugging Face Hub. `pad_token_id` picks the id to pad batches with, `pick_device`
resolves "auto".

torch, tokenizers and transformers are imported where they are used: this module is imported by the
command line's checks, which must start fast (transformers alone takes seconds to import).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from raylhf.contracts.hf_checkpoint import require_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"


@dataclass(frozen=True)
class Architecture:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    head_dim: int = 64


# ~1M and ~10M parameters with a 1024-token vocabulary (tied embeddings).
PRESETS: dict[str, Architecture] = {
    "tiny": Architecture(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=384),
    "small": Architecture(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1152),
}


def pick_device(device: str | torch.device = "auto") -> torch.device:
    import torch  # deferred: this module stays light for the command line

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: str | os.PathLike,
                    chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer and save it in HF format. Returns the HF tokenizer.

    It adds BOS when it encodes text (`tokenizer(text)`), as training prepends it, so a checkpoint given plain
    text in transformers or `vllm serve` sees the ids it was trained on; `chat_template` (Jinja) is saved with it."""
    # deferred: this module stays light for the command line
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, BOS, EOS])
    backend = bpe._tokenizer
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="right"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_causal_lm(preset: str, tokenizer: PreTrainedTokenizerBase, max_position_embeddings: int,
                    seed: int = 0) -> PreTrainedModel:
    """A randomly initialised LlamaForCausalLM of the named preset, sized to the tokenizer."""
    import torch  # deferred: this module stays light for the command line
    from transformers import LlamaConfig, LlamaForCausalLM  # deferred: this module stays light for the command line

    arch = PRESETS[preset]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_attention_heads,
        head_dim=arch.head_dim,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, *,
                   key: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved in checkpoint `path`; `key` names where the path came from in errors."""
    from transformers import AutoTokenizer  # deferred: this module stays light for the command line

    path = require_checkpoint(path, key, tokenizer=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer_if_present(path: str | os.PathLike, trust_remote_code: bool = False, *,
                              key: str | None = None) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved alongside a checkpoint, or None when the directory holds none."""
    require_checkpoint(path, key)
    if not (Path(path) / "tokenizer_config.json").exists():
        return None
    return load_tokenizer(path, trust_remote_code=trust_remote_code, key=key)


def pad_token_id(tokenizer: PreTrainedTokenizerBase | None, config: PretrainedConfig) -> int:
    """The id to pad batches with: the tokenizer's pad token, else the model config's pad or EOS token."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(config, "pad_token_id", None),
                      getattr(config, "eos_token_id", None)):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0  # padding is masked everywhere; any valid id does


def load_causal_lm(path: str | os.PathLike, device: str | torch.device = "auto", trust_remote_code: bool = False, *,
                   key: str | None = None, **kwargs: object) -> PreTrainedModel:
    """The causal LM in checkpoint `path` (safetensors only); `key` names where the path came from in errors.
    `kwargs` go to `from_pretrained` (`dtype`, ...)."""
    from transformers import AutoModelForCausalLM  # deferred: this module stays light for the command line

    path = require_checkpoint(path, key, weights=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), trust_remote_code=trust_remote_code, use_safetensors=True, local_files_only=True, **kwargs
    )
    return model.to(pick_device(device))


def save_pretrained_as(model: PreTrainedModel, out: str | os.PathLike, dtype: torch.dtype) -> None:
    """`model.save_pretrained(out)` with the floating-point weights in `dtype` and config.json saying so; the
    model itself keeps its weights (float32 masters) and its config. Trainers train in float32 and save in the
    dtype their input checkpoint had (`checkpoint_dtype`)."""
    from raylhf.contracts.snapshot import named_checkpoint_tensors  # deferred: torch, for the command line

    if model.dtype == dtype:
        model.save_pretrained(out)
        return
    config_dtype = model.config.dtype
    # Tied tensors once, as save_pretrained writes them itself (given a state dict it would write every name).
    state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in named_checkpoint_tensors(model)}
    model.save_pretrained(out, state_dict=state)
    try:  # save_pretrained wrote the model's own dtype into config.json (and into the config)
        model.config.dtype = dtype
        model.config.save_pretrained(out)
    finally:
        model.config.dtype = config_dtype


def checkpoint_dtype(path: str | os.PathLike, trust_remote_code: bool = False) -> torch.dtype:
    """The weight dtype a checkpoint's config declares (float32 when it says none)."""
    import torch  # deferred: this module stays light for the command line
    from transformers import AutoConfig  # deferred: this module stays light for the command line

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def context_length(path: str | os.PathLike, trust_remote_code: bool = False, *, key: str | None = None) -> int | None:
    """Longest sequence (prompt + response tokens) the model in checkpoint `path` takes: its config's
    `max_position_embeddings`, or None when the config does not say."""
    from transformers import AutoConfig  # deferred: this module stays light for the command line

    path = require_checkpoint(path, key)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) else None


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").exists() and any(p.glob("*.safetensors"))

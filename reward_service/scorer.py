"""`RewardScorer`: the in-process scoring math, usable without Ray (the `ScorerActor` wraps it).

For each rollout, the sequence is `prompt_ids + response_ids` (prompt with BOS, response with EOS when
it ended on one), P and T tokens long:
  - RM score     = the reward model's scalar head (`*ForTokenClassification` as the RM stage writes
                   it, or `*ForSequenceClassification`) applied to the last hidden state at position
                   P + T - 1, the last response token (read there explicitly, not found by searching
                   for the pad id, which may also occur inside content),
  - ref_logprobs = [log π_ref(response_ids[t] | prompt_ids, response_ids[:t]) for t < T], from the
                   reference policy's logits at positions P - 1 .. P + T - 2,
  - score        = sum over sources of `weight * r_source`, then the optional normalise/clip transform.
Rollouts are sorted by length and packed into right-padded micro-batches of at most
`max_tokens_per_microbatch` padded tokens. Right padding under a causal mask leaves every real
position's output independent of what follows it, so a rollout gets the same numbers whatever it is
batched with.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from raylhf.contracts.formatting import decode_response
from raylhf.contracts.records import Rollout
from raylhf.reward_service.errors import ScoringError
from raylhf.reward_service.normalize import RewardTransform, transform_from_config
from raylhf.reward_service.programmatic import ProgrammaticReward, RewardSource, sources_from_config, validate_sources

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pack_microbatches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped into micro-batches, longest first, each with rows * longest <= max_tokens
    (a single sequence longer than `max_tokens` gets a micro-batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _check_local_path(path: str | None, key: str) -> None:
    """A path that is clearly local (absolute or ./, ../, ~) must exist; anything else may be a hub id."""
    if path is None:
        return
    text = str(path)
    if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"{key}: checkpoint not found: {text}")


def _load_reward_model(path: str, load_kwargs: dict[str, Any]):
    """A one-label `*ForTokenClassification` (what the RM stage writes: a scalar with a bias at every
    position) or `*ForSequenceClassification`; either way the reward is its `score` head applied to the
    last hidden state of the last response token."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, trust_remote_code=load_kwargs["trust_remote_code"])
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if arch.endswith("ForTokenClassification"):
        model = AutoModelForTokenClassification.from_pretrained(path, **load_kwargs)
    elif arch.endswith("ForSequenceClassification"):
        model = AutoModelForSequenceClassification.from_pretrained(path, **load_kwargs)
    else:
        raise ValueError(f"reward.rm_path: {path} holds a {arch}; expected a *ForTokenClassification or "
                         "*ForSequenceClassification reward model")
    if model.config.num_labels != 1:
        n = model.config.num_labels
        raise ValueError(f"reward.rm_path: {path}: a reward model has one output label, this one has {n}")
    if not isinstance(getattr(model, "score", None), torch.nn.Linear):
        raise ValueError(f"reward.rm_path: {path}: {type(model).__name__} has no linear `score` head")
    return model


def scorer_settings(
    cfg: Any, default_rm_path: str | None = None, default_ref_path: str | None = None, trust_remote_code: bool = False
) -> dict[str, Any]:
    """`RewardScorer` arguments from a `RewardConfig`; `default_*_path` fill the paths it leaves unset
    (the run's own RM and SFT checkpoints). The RM is loaded only if a source needs it."""
    sources = sources_from_config(cfg.sources)
    needs_rm = any(s.kind == "rm" for s in sources)
    return dict(
        rm_path=(cfg.rm_path or default_rm_path) if needs_rm else None,
        ref_path=(cfg.ref_path or default_ref_path) if cfg.ref_logprobs else None,
        sources=sources,
        tokenizer_path=cfg.tokenizer_path,
        dtype=cfg.dtype,
        max_tokens_per_microbatch=cfg.max_tokens_per_microbatch,
        trust_remote_code=trust_remote_code,
    )


class RewardScorer:
    """Scores rollouts with the frozen reward model, reference policy and programmatic sources.

    Args:
        rm_path: reward-model checkpoint (a one-label `*ForTokenClassification` or
            `*ForSequenceClassification`); needed when a source is `rm`.
        ref_path: reference (SFT) policy checkpoint; unset: `ref_logprobs` are left as they are.
        sources: reward sources with weights (default: the RM alone).
        tokenizer_path: tokenizer for `function` sources (default: `rm_path`, else `ref_path`).
        dtype: "float32" or "bfloat16" for the frozen models.
        device: torch device ("cpu", "cuda", "cuda:1", ...).
        max_tokens_per_microbatch: padded tokens per forward pass.
        trust_remote_code: let the checkpoints run their own code (only if the config says so).
        transform: normalisation/clipping of the summed reward; None leaves it raw.
    """

    def __init__(
        self,
        rm_path: str | None = None,
        ref_path: str | None = None,
        sources: Sequence[RewardSource] = (RewardSource("rm"),),
        tokenizer_path: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        max_tokens_per_microbatch: int = 4096,
        trust_remote_code: bool = False,
        transform: RewardTransform | None = None,
    ):
        from transformers import AutoModelForCausalLM

        validate_sources(sources)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(_DTYPES)} (got {dtype!r})")
        if max_tokens_per_microbatch < 1:
            raise ValueError(f"max_tokens_per_microbatch: must be >= 1 (got {max_tokens_per_microbatch})")
        self.sources = list(sources)
        self.device = torch.device(device)
        self.max_tokens_per_microbatch = max_tokens_per_microbatch
        self.transform = transform
        _check_local_path(rm_path, "reward.rm_path")
        _check_local_path(ref_path, "reward.ref_path")
        _check_local_path(tokenizer_path, "reward.tokenizer_path")
        load_kwargs = dict(use_safetensors=True, trust_remote_code=trust_remote_code, dtype=_DTYPES[dtype])

        self.rm = None
        self.rm_weight = 0.0
        rm_source = next((s for s in self.sources if s.kind == "rm"), None)
        if rm_source is not None:
            if rm_path is None:
                raise ValueError(f"{rm_source.key}: an `rm` source needs a reward-model checkpoint (reward.rm_path)")
            self.rm = _load_reward_model(str(rm_path), load_kwargs)
            self.rm.to(self.device).eval().requires_grad_(False)
            self.rm_weight = rm_source.weight

        self.ref = None
        if ref_path is not None:
            self.ref = AutoModelForCausalLM.from_pretrained(str(ref_path), **load_kwargs)
            self.ref.to(self.device).eval().requires_grad_(False)

        self.functions = [ProgrammaticReward(s) for s in self.sources if s.kind != "rm"]
        self.tokenizer = None
        if any(f.kind == "function" for f in self.functions):
            from transformers import AutoTokenizer

            tok_path = tokenizer_path or rm_path or ref_path
            if tok_path is None:
                raise ValueError("reward.tokenizer_path: a `function` source needs a tokenizer to decode text")
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_path), trust_remote_code=trust_remote_code)

        models = [m for m in (self.rm, self.ref) if m is not None]
        self._vocab_limit = min((m.get_input_embeddings().num_embeddings for m in models), default=None)
        self._max_positions = min(
            (getattr(m.config, "max_position_embeddings", None) or math.inf for m in models), default=math.inf
        )
        pad = next((m.config.pad_token_id for m in models if m.config.pad_token_id is not None), None)
        # Any in-vocabulary id works as filler: padded positions are masked out and never read.
        self._pad_id = int(pad) if pad is not None else 0

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        *,
        default_rm_path: str | None = None,
        default_ref_path: str | None = None,
        trust_remote_code: bool = False,
        device: str = "cpu",
    ) -> "RewardScorer":
        """In-process scorer from a `RewardConfig` (e.g. for `mode: sync`), normalisation included."""
        settings = scorer_settings(cfg, default_rm_path, default_ref_path, trust_remote_code)
        return cls(**settings, device=device, transform=transform_from_config(cfg))

    def describe(self) -> dict[str, Any]:
        return {
            "rm": type(self.rm).__name__ if self.rm is not None else None,
            "ref": type(self.ref).__name__ if self.ref is not None else None,
            "functions": [f.path for f in self.functions],
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }

    def score(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        """New rollouts, in input order, with `score`, `ref_logprobs` (if a reference is loaded) and `t_scored`."""
        rollouts = list(rollouts)
        if not rollouts:
            return []
        self._check(rollouts)
        n = len(rollouts)
        totals = [0.0] * n
        ref_logprobs: list[list[float] | None] = [None] * n
        if self.rm is not None or self.ref is not None:
            rm_scores, ref_logprobs = self._forward(rollouts)
            if self.rm is not None:
                totals = [self.rm_weight * s for s in rm_scores]
        sample_ids = [r.sample_id for r in rollouts]
        for fn in self.functions:
            if fn.kind == "function":
                prompts = [decode_response(self.tokenizer, r.prompt_ids) for r in rollouts]
                responses = [decode_response(self.tokenizer, r.response_ids) for r in rollouts]
                values = fn(prompts, responses, sample_ids)
            else:
                prompt_ids = [list(r.prompt_ids) for r in rollouts]
                values = fn(prompt_ids, [list(r.response_ids) for r in rollouts], sample_ids)
            totals = [t + fn.source.weight * v for t, v in zip(totals, values)]
        if self.transform is not None:
            totals = self.transform(totals)
        bad = [sid for sid, t in zip(sample_ids, totals) if not math.isfinite(t)]
        if bad:
            raise ScoringError(f"non-finite reward for samples {bad[:5]}")
        now = time.time()
        return [
            dataclasses.replace(
                r,
                score=float(t),
                ref_logprobs=lp if lp is not None else r.ref_logprobs,
                t_scored=now,
            )
            for r, t, lp in zip(rollouts, totals, ref_logprobs)
        ]

    __call__ = score

    def _check(self, rollouts: list[Rollout]) -> None:
        for r in rollouts:
            if not r.prompt_ids:
                raise ScoringError(f"sample {r.sample_id!r}: empty prompt_ids")
            if not r.response_ids:
                raise ScoringError(
                    f"sample {r.sample_id!r}: empty response_ids; the reward is read at the last response token"
                )
            n = len(r.prompt_ids) + len(r.response_ids)
            if n > self._max_positions:
                limit = self._max_positions
                raise ScoringError(f"sample {r.sample_id!r}: {n} tokens exceed the models' {limit} positions")
            if self._vocab_limit is not None:
                lo, hi = min(min(r.prompt_ids), min(r.response_ids)), max(max(r.prompt_ids), max(r.response_ids))
                if lo < 0 or hi >= self._vocab_limit:
                    raise ScoringError(
                        f"sample {r.sample_id!r}: token id {lo if lo < 0 else hi} out of range [0, {self._vocab_limit})"
                    )

    @torch.inference_mode()
    def _forward(self, rollouts: list[Rollout]) -> tuple[list[float], list[list[float] | None]]:
        lengths = [len(r.prompt_ids) + len(r.response_ids) for r in rollouts]
        rm_scores = [0.0] * len(rollouts)
        ref_logprobs: list[list[float] | None] = [None] * len(rollouts)
        for batch in pack_microbatches(lengths, self.max_tokens_per_microbatch):
            width = max(lengths[i] for i in batch)
            input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = list(rollouts[i].prompt_ids) + list(rollouts[i].response_ids)
                input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                attention_mask[row, : len(seq)] = 1
            input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)

            if self.rm is not None:
                base = getattr(self.rm, self.rm.base_model_prefix)
                hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
                last = torch.tensor([lengths[i] - 1 for i in batch], device=self.device)  # [B]
                # The head is per-position, so applying it to the last hidden state alone is exact.
                values = self.rm.score(hidden[torch.arange(len(batch), device=self.device), last]).float()  # [B, 1]
                for row, i in enumerate(batch):
                    v = float(values[row, 0])
                    if not math.isfinite(v):
                        raise ScoringError(f"sample {rollouts[i].sample_id!r}: reward model returned {v}")
                    rm_scores[i] = v

            if self.ref is not None:
                logits = self.ref(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, L, V]
                for row, i in enumerate(batch):
                    p, t = len(rollouts[i].prompt_ids), len(rollouts[i].response_ids)
                    targets = input_ids[row, p : p + t]  # [T]
                    logp = torch.log_softmax(logits[row, p - 1 : p + t - 1].float(), dim=-1)  # [T, V]
                    lp = logp.gather(-1, targets[:, None])[:, 0]  # [T]
                    if not torch.isfinite(lp).all():
                        raise ScoringError(f"sample {rollouts[i].sample_id!r}: non-finite reference logprob")
                    ref_logprobs[i] = lp.tolist()
        return rm_scores, ref_logprobs

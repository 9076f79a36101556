"""`RewardScorer`: the in-process scoring math, usable without Ray (the `ScorerActor` wraps it).

For each rollout, the sequence is `prompt_ids + response_ids` (prompt with BOS, response with EOS when
it ended on one), P and T tokens long:
  - RM score     = the reward model's scalar head (`*ForTokenClassification` as the RM stage writes
                   it, or `*ForSequenceClassification`) applied to the last hidden state at position
                   P + T - 1, the last response token (read there explicitly, not found by searching
                   for the pad id, which may also occur inside content),
  - ref_logprobs = [log π_ref(response_ids[t] | prompt_ids, response_ids[:t]) for t < T], from the
                   reference policy's logits at positions P - 1 .. P + T - 2,
  - score        = sum over sources of `weight * r_source`, then the configured normalise/clip transform.
Rollouts are sorted by length and packed into right-padded micro-batches of at most
`max_tokens_per_microbatch` padded tokens. Right padding under a causal mask leaves every real
position's output independent of what follows it, so a rollout gets the same numbers whatever it is
batched with, up to float rounding (other batch shapes run other matmul kernels).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from raylhf.configs.schema import RewardConfig
from raylhf.contracts.formatting import decode_response
from raylhf.contracts.records import Rollout
from raylhf.reward_service.errors import ScoringError
from raylhf.reward_service.normalize import RewardTransform
from raylhf.reward_service.programmatic import ProgrammaticReward, source_key, validate_sources

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


def _as_str(path: Any) -> str | None:
    return None if path is None else str(path)


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


class RewardScorer:
    """Scores rollouts with the frozen reward model, reference policy and programmatic sources.

    Args:
        cfg: the reward section (sources, checkpoints, dtype, micro-batch budget, normalisation).
        rm_path: reward-model checkpoint used when `cfg.rm_path` is unset (the run's own RM stage output);
            `cfg.rm_path` wins when set. Loaded only when a source is `rm`, which then needs one of the two.
        ref_path: reference (SFT) policy checkpoint used when `cfg.ref_path` is unset (the run's SFT
            checkpoint); `cfg.ref_path` wins when set. Loaded only when `cfg.ref_logprobs`; with neither
            set, `ref_logprobs` are left as they are.
        trust_remote_code: let the checkpoints run their own code (only if the run config says so).
        device: torch device of the frozen models ("cpu", "cuda", "cuda:1", ...).
        apply_transform: apply `cfg`'s normalisation and clipping to the summed reward. A `RewardPool`
            turns it off in its actors and applies it once in the driver, so that all actors share one
            set of running statistics.
    The tokenizer that `function` sources decode with is `cfg.tokenizer_path`, else the reward model's,
    else the reference policy's.
    """

    def __init__(
        self,
        cfg: RewardConfig,
        *,
        rm_path: str | None,
        ref_path: str | None,
        trust_remote_code: bool = False,
        device: str = "cpu",
        apply_transform: bool = True,
    ):
        from transformers import AutoModelForCausalLM

        validate_sources(cfg.sources)
        self.cfg = cfg
        self.device = torch.device(device)
        self.transform = RewardTransform(cfg) if apply_transform else None
        rm_index = next((i for i, s in enumerate(cfg.sources) if s.kind == "rm"), None)
        rm_path = _as_str(cfg.rm_path or rm_path) if rm_index is not None else None
        ref_path = _as_str(cfg.ref_path or ref_path) if cfg.ref_logprobs else None
        tokenizer_path = cfg.tokenizer_path
        _check_local_path(rm_path, "reward.rm_path")
        _check_local_path(ref_path, "reward.ref_path")
        _check_local_path(tokenizer_path, "reward.tokenizer_path")
        load_kwargs = dict(use_safetensors=True, trust_remote_code=trust_remote_code, dtype=_DTYPES[cfg.dtype])

        self.rm = None
        self.rm_weight = 0.0
        if rm_index is not None:
            if rm_path is None:
                key = source_key(rm_index)
                raise ValueError(f"{key}: an `rm` source needs a reward-model checkpoint (reward.rm_path)")
            self.rm = _load_reward_model(rm_path, load_kwargs)
            self.rm.to(self.device).eval().requires_grad_(False)
            self.rm_weight = cfg.sources[rm_index].weight

        self.ref = None
        if ref_path is not None:
            self.ref = AutoModelForCausalLM.from_pretrained(ref_path, **load_kwargs)
            self.ref.to(self.device).eval().requires_grad_(False)

        self.functions = [ProgrammaticReward(s, source_key(i)) for i, s in enumerate(cfg.sources) if s.kind != "rm"]
        self.tokenizer = None
        if any(f.kind == "function" for f in self.functions):
            from transformers import AutoTokenizer

            tok_path = tokenizer_path or rm_path or ref_path
            if tok_path is None:
                raise ValueError("reward.tokenizer_path: a `function` source needs a tokenizer to decode text")
            self.tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust_remote_code)

        models = [m for m in (self.rm, self.ref) if m is not None]
        self._vocab_limit = min((m.get_input_embeddings().num_embeddings for m in models), default=None)
        self._max_positions = min(
            (getattr(m.config, "max_position_embeddings", None) or math.inf for m in models), default=math.inf
        )
        pad = next((m.config.pad_token_id for m in models if m.config.pad_token_id is not None), None)
        # Any in-vocabulary id works as filler: padded positions are masked out and never read.
        self._pad_id = int(pad) if pad is not None else 0

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
        for batch in pack_microbatches(lengths, self.cfg.max_tokens_per_microbatch):
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

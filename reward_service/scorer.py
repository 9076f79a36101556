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

A rollout that cannot be scored (empty, too long, a token id outside a model's vocabulary, a NaN/inf
score, reference logprob or function reward) is quarantined: left out of the result and returned as a
`Reject` (`raylhf.reward_service.rejects`), never given a made-up reward. A model whose weights hold
NaN or inf is broken for every rollout: it fails at load instead.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import torch

from raylhf.configs.schema import RewardConfig
from raylhf.contracts.formatting import decode_response
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.records import Rollout
from raylhf.reward_service.normalize import RewardTransform
from raylhf.reward_service.programmatic import ProgrammaticReward, source_key, validate_sources
from raylhf.reward_service.rejects import (
    EMPTY_SEQUENCE,
    NONFINITE_FUNCTION_REWARD,
    NONFINITE_REF_LOGPROBS,
    NONFINITE_REWARD,
    NONFINITE_RM_SCORE,
    TOKEN_OUT_OF_VOCAB,
    TOO_LONG,
    Reject,
)

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


def _load_reward_model(path: str, load_kwargs: dict[str, Any]):
    """A one-label `*ForTokenClassification` (what the RM stage writes: a scalar with a bias at every
    position) or `*ForSequenceClassification`; either way the reward is its `score` head applied to the
    last hidden state of the last response token."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, trust_remote_code=load_kwargs["trust_remote_code"], local_files_only=True)
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


def _check_finite_weights(model: torch.nn.Module, key: str, path: str) -> None:
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise ValueError(f"{key}: {path}: parameter {name} holds NaN or inf values; the checkpoint is broken")


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
    else the reference policy's. `score` returns the scored rollouts and keeps the ones it quarantined in
    `last_rejects`; `score_with_rejects` returns both (what a `ScorerActor` sends back).
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
        # Local checkpoints only: a mistyped path fails here, naming its key, and never reaches the Hub.
        for path, key, kind in ((rm_path, "reward.rm_path", {"weights": True}),
                                (ref_path, "reward.ref_path", {"weights": True}),
                                (tokenizer_path, "reward.tokenizer_path", {"model": False, "tokenizer": True})):
            if path is not None:
                require_checkpoint(path, key, **kind)
        load_kwargs = dict(use_safetensors=True, trust_remote_code=trust_remote_code, dtype=_DTYPES[cfg.dtype],
                           local_files_only=True)

        self.rm = None
        self.rm_weight = 0.0
        if rm_index is not None:
            if rm_path is None:
                key = source_key(rm_index)
                raise ValueError(f"{key}: an `rm` source needs a reward-model checkpoint (reward.rm_path)")
            self.rm = _load_reward_model(rm_path, load_kwargs)
            _check_finite_weights(self.rm, "reward.rm_path", rm_path)
            self.rm.to(self.device).eval().requires_grad_(False)
            self.rm_weight = cfg.sources[rm_index].weight

        self.ref = None
        if ref_path is not None:
            self.ref = AutoModelForCausalLM.from_pretrained(ref_path, **load_kwargs)
            _check_finite_weights(self.ref, "reward.ref_path", ref_path)
            self.ref.to(self.device).eval().requires_grad_(False)

        self.functions = [ProgrammaticReward(s, source_key(i)) for i, s in enumerate(cfg.sources) if s.kind != "rm"]
        self.tokenizer = None
        if any(f.kind == "function" for f in self.functions):
            from transformers import AutoTokenizer

            tok_path = tokenizer_path or rm_path or ref_path
            if tok_path is None:
                raise ValueError("reward.tokenizer_path: a `function` source needs a tokenizer to decode text")
            self.tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust_remote_code, local_files_only=True)

        models = [m for m in (self.rm, self.ref) if m is not None]
        # (label, vocabulary size, position limit) of each loaded model: what a rollout must fit.
        self._limits = [
            (label, m.get_input_embeddings().num_embeddings, getattr(m.config, "max_position_embeddings", None))
            for label, m in (("reward model", self.rm), ("reference policy", self.ref))
            if m is not None
        ]
        pad = next((m.config.pad_token_id for m in models if m.config.pad_token_id is not None), None)
        # Any in-vocabulary id works as filler: padded positions are masked out and never read.
        self._pad_id = int(pad) if pad is not None else 0
        self.last_rejects: list[Reject] = []

    def describe(self) -> dict[str, Any]:
        return {
            "rm": type(self.rm).__name__ if self.rm is not None else None,
            "ref": type(self.ref).__name__ if self.ref is not None else None,
            "functions": [f.path for f in self.functions],
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }

    def score(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        """New rollouts, in input order, with `score`, `ref_logprobs` (if a reference is loaded) and
        `t_scored`; the quarantined ones are left out and kept in `last_rejects`."""
        self.last_rejects = []
        scored, self.last_rejects = self.score_with_rejects(rollouts)
        return scored

    __call__ = score

    def score_with_rejects(self, rollouts: Sequence[Rollout]) -> tuple[list[Rollout], list[Reject]]:
        """(scored rollouts in input order, quarantined rollouts in input order).

        A rollout that cannot be scored (see `raylhf.reward_service.rejects` for the causes) is quarantined
        alone; the others of the batch are scored as if it had not been there. A failure that is not about
        one rollout raises: a reward function that raises or answers with the wrong count (`ScoringError`),
        a model forward pass that fails (its own exception).
        """
        rollouts = list(rollouts)
        rejected: dict[int, Reject] = {}

        def reject(i: int, cause: str, detail: str) -> None:
            rejected.setdefault(i, Reject.of(rollouts[i], cause, detail))

        def live() -> list[int]:
            return [i for i in range(len(rollouts)) if i not in rejected]

        for i, r in enumerate(rollouts):
            problem = self._unscorable(r)
            if problem is not None:
                reject(i, *problem)
        totals = dict.fromkeys(live(), 0.0)
        ref_logprobs: dict[int, list[float]] = {}
        if totals and (self.rm is not None or self.ref is not None):
            todo = live()
            rm_scores, ref_lps = self._forward([rollouts[i] for i in todo])
            for i, v, lp in zip(todo, rm_scores, ref_lps):
                if self.rm is not None:
                    if not math.isfinite(v):
                        reject(i, NONFINITE_RM_SCORE, f"reward model returned {v}")
                        continue
                    totals[i] = self.rm_weight * v
                if lp is not None:
                    t = next((t for t, x in enumerate(lp) if not math.isfinite(x)), None)
                    if t is not None:
                        reject(i, NONFINITE_REF_LOGPROBS, f"reference logprob {lp[t]} at response position {t}")
                        continue
                    ref_logprobs[i] = lp
        for fn in self.functions:
            todo = live()
            if not todo:
                break
            if fn.kind == "function":
                values = fn(
                    [decode_response(self.tokenizer, rollouts[i].prompt_ids) for i in todo],
                    [decode_response(self.tokenizer, rollouts[i].response_ids) for i in todo],
                )
            else:
                values = fn(
                    [list(rollouts[i].prompt_ids) for i in todo], [list(rollouts[i].response_ids) for i in todo]
                )
            for i, v in zip(todo, values):
                if not math.isfinite(v):
                    reject(i, NONFINITE_FUNCTION_REWARD, f"reward function {fn.path} returned {v}")
                else:
                    totals[i] += fn.source.weight * v
        for i in live():
            if not math.isfinite(totals[i]):
                reject(i, NONFINITE_REWARD, f"weighted sum of the reward sources is {totals[i]}")
        todo = live()
        if self.transform is not None and todo:
            for i, v in zip(todo, self.transform([totals[i] for i in todo])):
                totals[i] = v
                if not math.isfinite(v):
                    reject(i, NONFINITE_REWARD, f"normalised reward is {v}")
        now = time.time()
        scored = [
            dataclasses.replace(
                rollouts[i],
                score=float(totals[i]),
                ref_logprobs=ref_logprobs.get(i, rollouts[i].ref_logprobs),
                t_scored=now,
            )
            for i in live()
        ]
        return scored, [rejected[i] for i in sorted(rejected)]

    def _unscorable(self, r: Rollout) -> tuple[str, str] | None:
        """(cause, detail) when `r` cannot go through the models at all; checked before the forward pass,
        where an out-of-range id would fail the embedding lookup of every rollout in the micro-batch."""
        if not r.prompt_ids:
            return EMPTY_SEQUENCE, "empty prompt_ids"
        if not r.response_ids:
            return EMPTY_SEQUENCE, "empty response_ids; the reward is read at the last response token"
        n = len(r.prompt_ids) + len(r.response_ids)
        for label, _, positions in self._limits:
            if positions is not None and n > positions:
                return TOO_LONG, f"{n} tokens exceed the {label}'s {positions} positions"
        vocab = min((v for _, v, _ in self._limits), default=None)
        for part, ids in (("prompt", r.prompt_ids), ("response", r.response_ids)):
            if min(ids) >= 0 and (vocab is None or max(ids) < vocab):
                continue
            for t, tok in enumerate(ids):
                if tok < 0:
                    return TOKEN_OUT_OF_VOCAB, f"{part} token id {tok} at position {t} is negative"
                for label, size, _ in self._limits:
                    if tok >= size:
                        return TOKEN_OUT_OF_VOCAB, (
                            f"{part} token id {tok} at position {t} is outside the {label}'s vocabulary [0, {size})"
                        )
        return None

    @torch.inference_mode()
    def _forward(self, rollouts: list[Rollout]) -> tuple[list[float], list[list[float] | None]]:
        """Raw RM scores and reference logprobs, in input order; non-finite values are returned as they are."""
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
                    rm_scores[i] = float(values[row, 0])

            if self.ref is not None:
                logits = self.ref(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, L, V]
                for row, i in enumerate(batch):
                    p, t = len(rollouts[i].prompt_ids), len(rollouts[i].response_ids)
                    targets = input_ids[row, p : p + t]  # [T]
                    logp = torch.log_softmax(logits[row, p - 1 : p + t - 1].float(), dim=-1)  # [T, V]
                    ref_logprobs[i] = logp.gather(-1, targets[:, None])[:, 0].tolist()  # [T]
        return rm_scores, ref_logprobs

"""`RewardScorer`: the in-process scoring math, usable without Ray (the `ScorerActor` wraps it).

For each rollout, the sequence is `prompt_ids + response_ids` (prompt with BOS, response with EOS when
it ended on one), P and T tokens long:
  - RM score     = the reward model's scalar head applied to the last hidden state at position P + T - 1,
                   the last response token: `raylhf.learners.reward_model.score_sequences`, the one
                   reward-model path (the RM trainer and the RM evaluations read rewards through it too),
  - ref_logprobs = [log π_ref(response_ids[t] | prompt_ids, response_ids[:t]) for t < T], from the
                   reference policy's logits at positions P - 1 .. P + T - 2
                   (`raylhf.learners.lm_losses.token_logprobs`, as the learner computes its own),
  - score        = sum over sources of `weight * r_source`, then the configured normalise/clip transform.
Rollouts are sorted by length and packed into right-padded micro-batches of at most
`max_tokens_per_microbatch` padded tokens (`raylhf.learners.batching.pack_microbatches`). Right padding
under a causal mask leaves every real position's output independent of what follows it, so a rollout gets
the same numbers whatever it is batched with, up to float rounding (other batch shapes run other matmul
kernels).

A rollout that cannot be scored (empty, too long, a token id outside a model's vocabulary, a NaN/inf
score, reference logprob or function reward) is quarantined: left out of the result and returned as a
`Reject` (`raylhf.reward_service.rejects`), never given a made-up reward. A model whose weights hold
NaN or inf is broken for every rollout: it fails at load instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Sequence

import torch

from raylhf.configs.schema import RewardConfig
from raylhf.configs.sections.reward import MODEL_KINDS
from raylhf.contracts.formatting import decode_response
from raylhf.contracts.hf_checkpoint import require_checkpoint
from raylhf.contracts.records import Rollout
from raylhf.learners.batching import pack_microbatches, pad_right
from raylhf.learners.lm_losses import token_logprobs
from raylhf.learners.models import load_causal_lm
from raylhf.learners.reward_model import load_reward_model, score_sequences
from raylhf.learners.rollout_batch import gather_positions
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


def _as_str(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(path)


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
        rm_path: str | os.PathLike | None,
        ref_path: str | os.PathLike | None,
        trust_remote_code: bool = False,
        device: str = "cpu",
        apply_transform: bool = True,
    ):
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
        dtype = _DTYPES[cfg.dtype]

        self.rm = None
        self.rm_weight = 0.0
        if rm_index is not None:
            if rm_path is None:
                key = source_key(rm_index)
                raise ValueError(f"{key}: an `rm` source needs a reward-model checkpoint (reward.rm_path)")
            self.rm = load_reward_model(rm_path, self.device, trust_remote_code, key="reward.rm_path", dtype=dtype)
            _check_finite_weights(self.rm, "reward.rm_path", rm_path)
            self.rm.requires_grad_(False)
            self.rm_weight = cfg.sources[rm_index].weight

        self.ref = None
        if ref_path is not None:
            self.ref = load_causal_lm(ref_path, self.device, trust_remote_code, key="reward.ref_path", dtype=dtype)
            _check_finite_weights(self.ref, "reward.ref_path", ref_path)
            self.ref.eval().requires_grad_(False)

        self.functions = [ProgrammaticReward(s, source_key(i)) for i, s in enumerate(cfg.sources)
                          if s.kind not in MODEL_KINDS]
        # `ref_logprob` source: the summed reference logprob of the response, weighted (validated: at most one).
        self.ref_logprob_weight = sum(s.weight for s in cfg.sources if s.kind == "ref_logprob")
        if self.ref is None and any(s.kind == "ref_logprob" for s in cfg.sources):
            raise ValueError("reward.sources: a `ref_logprob` source needs a reference policy (reward.ref_path)")
        self.tokenizer = None
        if any(f.kind == "function" for f in self.functions):
            # deferred: transformers takes seconds to import, and most scorers need no tokenizer
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
                    totals[i] += self.ref_logprob_weight * math.fsum(lp)
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
        seqs = [list(r.prompt_ids) + list(r.response_ids) for r in rollouts]
        budget = self.cfg.max_tokens_per_microbatch
        rm_scores = [0.0] * len(rollouts)
        if self.rm is not None:
            rm_scores = score_sequences(self.rm, seqs, self._pad_id, self.device, max_tokens=budget).tolist()
        ref_logprobs: list[list[float] | None] = [None] * len(rollouts)
        if self.ref is not None:
            for batch in pack_microbatches([len(s) for s in seqs], budget):
                for i, lp in zip(batch, self._ref_logprobs([rollouts[i] for i in batch], [seqs[i] for i in batch])):
                    ref_logprobs[i] = lp
        return rm_scores, ref_logprobs

    def _ref_logprobs(self, rollouts: list[Rollout], seqs: list[list[int]]) -> list[list[float]]:
        """log π_ref of each rollout's response tokens, from one forward pass over the right-padded `seqs`."""
        input_ids, attention_mask = pad_right(seqs, self._pad_id)  # [B, L]
        prompt_lens = torch.tensor([len(r.prompt_ids) for r in rollouts])  # [B]
        response_lens = [len(r.response_ids) for r in rollouts]
        # Response token t of a row is predicted at position P - 1 + t; past a row's end, any in-range
        # position does (those entries are cut off below).
        positions = (prompt_lens[:, None] - 1 + torch.arange(max(response_lens))).clamp(max=input_ids.shape[1] - 1)
        targets = input_ids.gather(1, (positions + 1).clamp(max=input_ids.shape[1] - 1))  # [B, T]
        logits = self.ref(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        logprobs = token_logprobs(gather_positions(logits, positions.to(self.device)), targets.to(self.device))
        return [logprobs[row, :t].tolist() for row, t in enumerate(response_lens)]  # [T] each

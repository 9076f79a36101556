"""`PPOLearner`: the PPO-ptx learner (InstructGPT step 3) for the asynchronous actor/learner setting.

`PPOLearner` holds the policy (initialised from the SFT model), the value model (initialised from the
reward model, as in the paper), one optimiser for each and the KL controller. `PPOLearner.train_step`
turns a batch of scored rollouts into PPO updates::

    staleness filter -> collate -> π_old, V_old (current weights) -> per-token rewards -> GAE
        -> truncated importance weights -> ppo_epochs × minibatches (policy + ptx, value) -> KL control

Rewards [InstructGPT, Eq. 2] are `raylhf.learners.losses.kl_shaped_rewards`: ``-β·KL_t(π_old ‖ π_ref)``
at every response token plus the RM score at the last one. The reference logprobs and the RM score
come with the rollouts (the reward service computes them), so neither frozen model runs on the
learner's critical path.

Off-policy correction for rollouts sampled by an older policy (the generators run behind the
learner): the learner recomputes ``π_old`` with its current weights when a batch arrives (the proximal
policy of decoupled PPO [Hilton]); the PPO ratio is clipped around it, and each token's surrogate is
multiplied by the truncated importance weight ``min(π_old/π_behaviour, c)`` [IMPALA]
(`raylhf.learners.losses.truncated_importance_weights`) computed from the behaviour logprobs the
generator recorded. Rollouts more than ``max_staleness`` versions old are dropped and counted.

Batch layout and collation are `raylhf.learners.rollout_batch`; the two networks, their forward passes
at the response tokens and the optimiser step of one minibatch are `raylhf.learners.policy_value`.

This module imports torch and transformers only; `raylhf.learners.ppo_actor.PPOLearnerActor` wraps it
in a Ray actor.

References:
    [InstructGPT] Ouyang et al. 2022, arXiv:2203.02155.
    [PPO] Schulman et al. 2017, arXiv:1707.06347.
    [IMPALA] Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with Importance Weighted
        Actor-Learner Architectures", arXiv:1802.01561 (truncated importance weights).
    [Hilton] Hilton et al. 2021, "Batch size-invariance for policy optimization", arXiv:2110.00641
        (decoupling the proximal policy from the behaviour policy).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from raylhf.contracts.records import Rollout
from raylhf.contracts.snapshot import WeightSnapshot, build_snapshot, named_checkpoint_tensors
from raylhf.contracts.timing import PhaseTimer
from raylhf.learners.losses import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    truncated_importance_weights,
)
from raylhf.learners.models import load_tokenizer_if_present, pad_token_id, pick_device
from raylhf.learners.policy_value import Forward, PolicyValue
from raylhf.learners.pretrain import sample_windows
from raylhf.learners.rollout_batch import RolloutBatch, as_scored, collate, filter_stale, validate_rollouts

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

    from raylhf.configs.schema import PPOConfig

log = logging.getLogger(__name__)

STATE_FILE = "learner_state.pt"  # optimiser and KL-controller state (torch.load(weights_only=True))
META_FILE = "learner_state.json"  # version, step count, RNG state, settings
# float32 weights of a model whose HF checkpoint is saved narrower (bf16/fp16 input), so a resume is exact
MASTER_FILE = "master_weights.safetensors"
_SNAPSHOT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Phases of `train_step`, each timed into a `time_<phase>_s` metric (wall seconds, summed over minibatches):
# collate, the π_old / V_old forward passes (`evaluate`), rewards + GAE + importance weights (`advantages`), and
# in `PolicyValue.minibatch_step` per minibatch the policy and value forward passes and losses, the
# pretraining-mix forward, each model's backward (the policy's includes the ptx term's), gradient clipping and
# the optimiser steps (`optimizer`).
PHASES = ("collate", "evaluate", "advantages", "policy_forward", "value_forward", "ptx_forward", "policy_backward",
          "value_backward", "optimizer")
# Metrics that measure wall time, not the computation (they differ between identical runs).
TIMING_METRICS = ("step_time_s", "tokens_per_s", *(f"time_{phase}_s" for phase in PHASES))
# Metrics of `_optimise`, token-weighted over the minibatch steps taken.
_STEP_METRICS = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "ratio_mean", "vf_clipfrac", "value_mean",
                 "policy_grad_norm", "value_grad_norm")


class PPOLearner:
    """Policy and value model with their optimisers and the KL controller; one `train_step` per batch.

    Args:
        cfg: the `ppo` section of the run config; the hyperparameters (learning rates, β and its
            controller, GAE γ and λ, clips, epochs and minibatch size, ptx, importance-weight
            truncation, staleness bound) are its fields, documented in `raylhf.configs.schema.PPOConfig`.
        policy_path: SFT checkpoint (HF causal LM, tokenizer alongside); the policy starts from it.
        value_path: reward-model checkpoint (`*ForTokenClassification`, 1 label); the value function
            starts from it.
        pretrain_stream: the packed pretraining corpus (`raylhf.learners.pretrain.pack_documents`); needed
            when ``cfg.ptx_coef > 0``, ignored otherwise.
        seed: seeds the minibatch order and the pretraining-window sampler.
        device: "auto" | "cpu" | "cuda" | "cuda:N".
        bf16: bf16 autocast for forward passes (weights and optimiser state stay float32).
        snapshot_dtype: dtype of published weights, the generators' dtype ("float32" | "bfloat16" |
            "float16").
        torch_threads: torch intra-op threads of this process (None leaves the setting alone).
        trust_remote_code: let the checkpoints run their own code.
    """

    # False repeats the first minibatch's forward passes in its optimiser step instead of reusing those of
    # π_old (same result up to float rounding; the learner profile's baseline, `benchmarks/bench_training.py`).
    reuse_first_forward: bool = True
    # False: AdamW's default (foreach) implementation instead of the fused kernel (the profile's baseline).
    fused_optimizer: bool = True
    # False: the output layer runs on every position, as the model's own forward does (the profile's baseline).
    split_output_layer: bool = True

    def __init__(
        self,
        cfg: PPOConfig,
        policy_path: str | os.PathLike,
        value_path: str | os.PathLike,
        *,
        pretrain_stream: np.ndarray | None = None,
        seed: int = 0,
        device: str = "auto",
        bf16: bool = False,
        snapshot_dtype: str = "float32",
        torch_threads: int | None = None,
        trust_remote_code: bool = False,
    ):
        if snapshot_dtype not in _SNAPSHOT_DTYPES:
            raise ValueError(f"snapshot_dtype: expected one of {sorted(_SNAPSHOT_DTYPES)}, got {snapshot_dtype!r}")
        if cfg.ptx_coef > 0:
            if pretrain_stream is None:
                raise ValueError("ptx_coef > 0 needs a pretraining token stream (pretrain_stream)")
            if len(pretrain_stream) <= cfg.ptx_seq_len + 1:
                raise ValueError(f"pretraining stream has {len(pretrain_stream)} tokens, fewer than one window of "
                                 f"{cfg.ptx_seq_len + 1}")
        if torch_threads is not None:
            torch.set_num_threads(int(torch_threads))

        self.cfg = cfg
        self.pretrain_stream = pretrain_stream if cfg.ptx_coef > 0 else None
        self.device = pick_device(device)
        self.bf16 = bool(bf16)
        self.seed = int(seed)
        self.snapshot_dtype = snapshot_dtype
        self.trust_remote_code = trust_remote_code

        self.kl_controller: FixedKLController | AdaptiveKLController = (
            AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
            else FixedKLController(cfg.kl_coef)
        )
        self.tokenizer = load_tokenizer_if_present(policy_path, trust_remote_code)
        self.timer = PhaseTimer()
        self._load_models(policy_path, value_path)
        self.pad_id = pad_token_id(self.tokenizer, self.policy.config)
        self.rng = np.random.default_rng(self.seed)
        self._version = 0
        self.steps = 0

    # ----------------------------------------------------------------------------------------------
    # setup

    def _load_models(self, policy_path: str | os.PathLike, value_path: str | os.PathLike) -> None:
        self.models = PolicyValue(self.cfg, policy_path, value_path, device=self.device, bf16=self.bf16,
                                  trust_remote_code=self.trust_remote_code, timer=self.timer,
                                  split_output_layer=self.split_output_layer, fused_optimizer=self.fused_optimizer)

    @property
    def policy(self) -> PreTrainedModel:
        return self.models.policy

    @property
    def value_model(self) -> PreTrainedModel:
        return self.models.value_model

    @property
    def version(self) -> int:
        """Published weight version; rollouts sampled with version v have staleness ``version - v``."""
        return self._version

    @property
    def kl_coef(self) -> float:
        return self.kl_controller.value

    # ----------------------------------------------------------------------------------------------
    # minibatch plans, current logprobs

    def _plan(self, batch: RolloutBatch, order: Tensor) -> list[list[Tensor]]:
        """Minibatches of `minibatch_size` rows in `order`, each cut into micro-batches (`microbatch_tokens`)."""
        return batch.minibatches(order, self.cfg.minibatch_size, self.cfg.microbatch_tokens)

    def _permutation(self, n: int) -> Tensor:
        return torch.from_numpy(self.rng.permutation(n)).to(self.device)

    @torch.no_grad()
    def logprobs(self, rollouts: Sequence[Rollout]) -> list[list[float]]:
        """Current policy logprobs of each rollout's response tokens (one list of T floats per rollout)."""
        if not rollouts:
            return []
        batch = collate(as_scored(rollouts), self.pad_id, self.device)
        plan = self._plan(batch, torch.arange(len(rollouts), device=self.device))
        logprobs, _, _, _ = self.models.evaluate(batch, plan)
        return [logprobs[i, : len(r.response_ids)].tolist() for i, r in enumerate(rollouts)]

    # ----------------------------------------------------------------------------------------------
    # the train step

    def train_step(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        """One PPO-ptx update on a batch of scored rollouts. Returns metrics (python floats).

        One call per phase: staleness filter (`filter_stale`) -> `collate` -> π_old, V_old
        (`PolicyValue.evaluate`) -> per-token rewards (`kl_shaped_rewards`) -> GAE (`gae`, then
        `_normalise_advantages`) -> `truncated_importance_weights` -> ppo_epochs × minibatches (`_optimise`) ->
        KL control (`_control_kl`).

        The first epoch's minibatch order is drawn before π_old is computed, and π_old is computed on those
        same minibatches: the first minibatch's forward pass then *is* π_θ of its optimiser step (no step was
        taken yet, θ = θ_old), so the step reuses it, graph and all, instead of repeating it; its PPO ratio is
        exactly 1, as the algorithm defines it. Later minibatches run their own forward pass. Each forward
        pass covers one micro-batch of rows of similar length (`microbatch_tokens`); a minibatch's loss is
        the token-weighted sum of its micro-batches' losses, so its gradient is the minibatch's.

        Raises ValueError for unscored or malformed rollouts and for rollouts from a future version.

        Metrics (means over the rollouts kept, token-level where per token):
            rollouts, dropped_stale, staleness_mean, staleness_max: what was trained on / dropped.
            reward: mean RM score. kl: mean per-sequence Σ_t KL_t(π_old ‖ π_ref) (the configured
            estimator). kl_coef: β used for this batch; kl_coef_next: after the controller update.
            non_score_reward: mean per-sequence Σ_t -β·KL_t. entropy: of π_old.
            advantages_mean (before whitening), returns_mean, value_old_mean, explained_variance (of
            V_old for the returns). is_weight_mean, is_truncated_frac: importance weights and the
            fraction of tokens where exp(old - behaviour) > c.
            policy_loss, value_loss, clipfrac, approx_kl, ratio_mean, vf_clipfrac, value_mean,
            policy_grad_norm, value_grad_norm: token-weighted means over the optimiser steps taken
            (nan if none). ptx_loss (only when ptx_coef > 0): mean pretraining NLL; ptx_windows:
            pretraining windows drawn. optimizer_steps, skipped_steps: minibatch steps taken / skipped
            by the non-finite guard. response_len, tokens_per_s (response tokens per second of this
            call), step_time_s, and time_<phase>_s for each phase of `PHASES` (the learner's profile).
        When every rollout is too stale, only rollouts, dropped_stale, kl_coef, skipped_steps and
        step_time_s are returned and nothing is trained.
        """
        cfg = self.cfg
        t_start = time.perf_counter()
        self.timer.reset()  # drops what a step that raised left behind
        validate_rollouts(rollouts)
        kept, staleness, dropped = filter_stale(rollouts, self._version, cfg.max_staleness)
        if not kept:
            log.warning("all %d rollouts were staler than %d versions; nothing to train on", dropped, cfg.max_staleness)
            return {"rollouts": 0.0, "dropped_stale": float(dropped), "kl_coef": self.kl_coef, "skipped_steps": 0.0,
                    "step_time_s": time.perf_counter() - t_start}

        with self.timer("collate"):
            batch = collate(kept, self.pad_id, self.device)
        first_plan = self._plan(batch, self._permutation(len(kept)))
        with self.timer("evaluate"):
            old_logprobs, old_values, entropy, first = self.models.evaluate(batch, first_plan,
                                                                            keep_first=self.reuse_first_forward)
        with self.timer("advantages"):
            beta = self.kl_coef
            rewards, kl = kl_shaped_rewards(batch.scores, old_logprobs, batch.ref_logprobs, batch.mask, beta,
                                            cfg.kl_estimator)
            raw_advantages, returns = gae(rewards, old_values, batch.mask, cfg.gamma, cfg.lam)
            advantages = self._normalise_advantages(raw_advantages, batch.mask)
            is_weights, is_metrics = truncated_importance_weights(old_logprobs, batch.behaviour_logprobs, batch.mask,
                                                                  cfg.is_clip_c)
        opt = self._optimise(batch, first_plan, first, old_logprobs, old_values, advantages, returns, is_weights)
        kl_mean = self._control_kl(kl, len(kept))
        self.steps += 1

        step_time = time.perf_counter() - t_start
        phase_s = self.timer.reset()
        mask = batch.mask
        response_tokens = int(mask.sum())
        return {
            "rollouts": float(len(kept)),
            "reward": float(batch.scores.mean()),
            "kl": kl_mean,
            "kl_coef": beta,
            "kl_coef_next": self.kl_coef,
            "non_score_reward": float((-beta * kl).sum(dim=1).mean()),
            "entropy": float(masked_mean(entropy, mask)),
            "advantages_mean": float(masked_mean(raw_advantages, mask)),
            "returns_mean": float(masked_mean(returns, mask)),
            "value_old_mean": float(masked_mean(old_values, mask)),
            "explained_variance": explained_variance(old_values, returns, mask),
            "staleness_mean": float(np.mean(staleness)),
            "staleness_max": float(max(staleness)),
            "dropped_stale": float(dropped),
            **is_metrics,
            "response_len": response_tokens / len(kept),
            "tokens_per_s": response_tokens / step_time,
            "step_time_s": step_time,
            **opt,
            **{f"time_{phase}_s": phase_s.get(phase, 0.0) for phase in PHASES},
        }

    def _normalise_advantages(self, advantages: Tensor, mask: Tensor) -> Tensor:
        """Whitened over the batch's valid tokens when configured (and there are two to whiten)."""
        if self.cfg.whiten_advantages and int(mask.sum()) >= 2:
            return masked_whiten(advantages, mask)
        return advantages

    def _control_kl(self, kl: Tensor, n_rollouts: int) -> float:
        """Feed the measured KL per sequence (mean over the batch) to the KL controller; returns it."""
        kl_mean = float(kl.sum(dim=1).mean())
        if math.isfinite(kl_mean):
            self.kl_controller.update(kl_mean, n_steps=n_rollouts)
        else:
            log.warning("non-finite KL to the reference policy; KL controller not updated")
        return kl_mean

    def _optimise(
        self, batch: RolloutBatch, first_plan: list[list[Tensor]], first: list[Forward] | None, old_logprobs: Tensor,
        old_values: Tensor, advantages: Tensor, returns: Tensor, is_weights: Tensor,
    ) -> dict[str, float]:
        """`ppo_epochs` passes of shuffled minibatches (the first pass in `first_plan`, whose first minibatch's
        forward passes are `first`), one `PolicyValue.minibatch_step` each; metrics are token-weighted means
        over the steps taken."""
        n = batch.mask.shape[0]
        sums = dict.fromkeys(_STEP_METRICS, 0.0)
        tokens_done = ptx_sum = 0.0
        steps_done = skipped = ptx_windows = 0
        for epoch in range(self.cfg.ppo_epochs):
            plan = first_plan if epoch == 0 else self._plan(batch, self._permutation(n))
            for k, microbatches in enumerate(plan):
                forwards = first if epoch == 0 and k == 0 else None
                windows = self._ptx_batch(sum(len(rows) for rows in microbatches))
                ptx_windows += 0 if windows is None else windows.shape[0]
                step = self.models.minibatch_step(batch, microbatches, forwards, old_logprobs, old_values,
                                                  advantages, returns, is_weights, windows)
                if step is None:
                    skipped += 1
                    continue
                tokens = step.pop("tokens")
                tokens_done += tokens
                steps_done += 1
                ptx_sum += step.pop("ptx_loss", 0.0)
                for key in _STEP_METRICS:
                    sums[key] += step[key] * tokens
        out = {key: (sums[key] / tokens_done if tokens_done else float("nan")) for key in _STEP_METRICS}
        if self.cfg.ptx_coef > 0:
            out["ptx_loss"] = ptx_sum / steps_done if steps_done else float("nan")
        out["ptx_windows"] = float(ptx_windows)
        out["optimizer_steps"] = float(steps_done)
        out["skipped_steps"] = float(skipped)
        return out

    def _ptx_batch(self, rollouts: int) -> Tensor | None:
        """Pretraining windows [W, ptx_seq_len + 1] for a minibatch of `rollouts` rollouts (None without the
        ptx term): `ptx_per_rl` per rollout, at least one. The ptx loss is a mean over windows drawn uniformly
        at random, so its gradient is an unbiased estimate of the corpus gradient whatever their number: fewer
        windows add variance, not bias."""
        if self.cfg.ptx_coef <= 0:
            return None
        n_windows = max(1, round(self.cfg.ptx_per_rl * rollouts))
        return sample_windows(self.pretrain_stream, n_windows, self.cfg.ptx_seq_len, self.rng)

    # ----------------------------------------------------------------------------------------------
    # weights out

    def publish(self, advance: bool = True) -> tuple[int, WeightSnapshot]:
        """Advance the version (unless `advance` is False: the current weights again, under their version,
        for generators that lost them) and pack the policy weights for the generators.

        Names are the HF checkpoint's (what vLLM's `load_weights` maps); a tied embedding is carried
        once, under `model.embed_tokens.weight`, as `save_pretrained` writes it. Weights are cast to
        `snapshot_dtype`.
        """
        if advance:
            self._version += 1
        dtype = _SNAPSHOT_DTYPES[self.snapshot_dtype]
        with torch.no_grad():
            tensors = ((name, t.to(dtype) if t.is_floating_point() else t) for name, t in named_checkpoint_tensors(self.policy))
            snapshot = build_snapshot(tensors, self._version)
        return self._version, snapshot

    # ----------------------------------------------------------------------------------------------
    # checkpoints

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write `path/policy` (HF model + tokenizer), `path/value` (HF model), each in the dtype of the checkpoint
        it started from (training is float32), and the learner state: optimisers and KL controller in
        `learner_state.pt` (tensors and plain values only, loadable with ``weights_only=True``), version, step
        count and RNG state in `learner_state.json`, and for a model saved narrower than float32 its float32
        weights in `master_weights.safetensors`."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.models.save(out / "policy", out / "value")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out / "policy")
        master = self.models.master_weights()
        if master:
            save_file(master, str(out / MASTER_FILE))
        torch.save(
            {
                "policy_optimizer": self.models.policy_optimizer.state_dict(),
                "value_optimizer": self.models.value_optimizer.state_dict(),
                "kl_controller": self.kl_controller.state_dict(),
            },
            out / STATE_FILE,
        )
        meta = {
            "version": self._version,
            "steps": self.steps,
            "rng": self.rng.bit_generator.state,
            "kl_controller": type(self.kl_controller).__name__,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=1))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a `save_checkpoint` directory: weights, optimiser, KL-controller, version and RNG
        state. Hyperparameters stay this learner's own (pass the same config to resume exactly)."""
        src = Path(path)
        for required in ("policy", "value", STATE_FILE, META_FILE):
            if not (src / required).exists():
                raise FileNotFoundError(f"{src}: not a PPO learner checkpoint (missing {required})")
        meta = json.loads((src / META_FILE).read_text())
        if meta["kl_controller"] != type(self.kl_controller).__name__:
            raise ValueError(
                f"{src}: saved with a {meta['kl_controller']}, this learner uses a {type(self.kl_controller).__name__}"
            )
        state = torch.load(src / STATE_FILE, map_location=self.device, weights_only=True)
        self._load_models(src / "policy", src / "value")
        if (src / MASTER_FILE).exists():
            self.models.load_master_weights(load_file(str(src / MASTER_FILE), device=str(self.device)))
        self.models.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.models.value_optimizer.load_state_dict(state["value_optimizer"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self._version = int(meta["version"])
        self.steps = int(meta["steps"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = meta["rng"]

    def describe(self) -> dict[str, Any]:
        """Sizes and settings, for logs."""
        return {
            "version": self._version,
            "steps": self.steps,
            "device": str(self.device),
            "bf16": self.bf16,
            "policy_parameters": sum(p.numel() for p in self.models.policy_params),
            "value_parameters": sum(p.numel() for p in self.models.value_params),
            "kl_coef": self.kl_coef,
            "ptx": self.cfg.ptx_coef > 0,
        }

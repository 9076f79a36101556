"""The learner of the PPO stage (`ppo`): the PPO-ptx objective, its batches, the KL penalty, the pipeline's
mode and bounds, evaluation and checkpoints during training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylhf.configs.sections.base import Placement


class PPOConfig(Placement):
    """Placement (`num_cpus`, `num_gpus`, `resources`, `cpus`) is the learner actor's."""

    # The one placement default that differs: the learner is the busiest actor, it gets a whole CPU.
    num_cpus: float = Field(1.0, gt=0.0)
    """CPUs reserved for the learner actor (fractions allowed); its torch thread count is this, rounded,
    at least 1."""
    kl_coef: float = Field(0.2, ge=0.0)
    """β: weight of the per-token KL penalty to the SFT policy inside the reward (InstructGPT: 0.02). The demo
    uses 0.2: its small reward model mostly sees length, and a weak KL lets PPO over-optimise it (shorter,
    less correct answers: RM score up, true quality down)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """KL estimator: k1 log-ratio, k2 ½·log-ratio², k3 Schulman's unbiased low-variance form."""
    adaptive_kl: bool = False
    """Adapt β towards `target_kl` (Ziegler et al. 2019) instead of keeping it fixed."""
    target_kl: float = Field(6.0, gt=0.0)
    """Target KL per sequence for the adaptive controller."""
    kl_horizon: int = Field(10000, ge=1)
    """Horizon (in samples) of the adaptive KL controller."""
    batch_size: int = Field(64, ge=1)
    """Rollouts per learner step (InstructGPT: 512)."""
    minibatch_size: int = Field(32, ge=1)
    """Rollouts per optimiser step; a batch gives `ceil(batch_size / minibatch_size)` steps per epoch
    (InstructGPT: 64)."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each batch (InstructGPT: 1)."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel of the learner's policy and value models. `eager`: matmuls and a softmax; `sdpa`:
    PyTorch's fused scaled-dot-product attention; `auto`: eager on CPU, sdpa on GPU. Same attention either way
    (up to float rounding); on CPU the fused kernel's backward was ~12x its forward for the demo's short
    sequences, and eager made the tiny and small learner steps 1.24x faster (benchmarks/README.md)."""
    microbatch_tokens: int = Field(0, ge=0)
    """Most padded tokens (rows x longest prompt + response) per learner forward pass: a minibatch's rows are
    sorted by length and cut into micro-batches of at most this many, whose token-weighted gradients add up to
    the minibatch's (the same update, up to float rounding), so short responses are not padded to the longest
    one of the minibatch. 0: one forward pass per minibatch."""
    lr: float = Field(1e-4, gt=0.0)
    """Policy learning rate (AdamW, constant, no weight decay; InstructGPT: 9.65e-6 at 1.3B parameters, the
    tiny demo model needs more)."""
    value_lr: float = Field(1e-4, gt=0.0)
    """Value-model learning rate (the value model starts from the reward model)."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """GAE discount γ; 1 for the bandit (one reward at the end of the response)."""
    lam: float = Field(0.95, ge=0.0, le=1.0)
    """GAE λ: 1 is the Monte-Carlo return, 0 the one-step TD target."""
    clip_eps: float = Field(0.2, gt=0.0)
    """PPO ratio clip ε (InstructGPT: 0.2)."""
    value_clip_eps: float = Field(0.2, gt=0.0)
    """Clip of the value update around the old value, in reward units."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Max global gradient norm of each model; 0 disables clipping."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the batch's response tokens."""
    ptx_coef: float = Field(1.0, ge=0.0)
    """γ_ptx: weight of the pretraining LM loss in PPO-ptx (InstructGPT: 27.8); 0 is plain PPO."""
    ptx_per_rl: float = Field(0.25, gt=0.0)
    """Pretraining windows per RL rollout in each minibatch: `round(ptx_per_rl x rollouts)`, at least one
    (InstructGPT: 8). Below 1 the windows are a random subsample: the ptx loss is a mean over windows drawn
    uniformly from the corpus, so its expected gradient is the same for any number of windows (fewer add
    variance, not bias), and each costs a policy forward and backward of `ptx_seq_len` tokens. The demo's
    0.25 (8 windows of 64 tokens per minibatch of 32) made the learner's step 1.3x faster than 1.0 with the
    same in-training win rate over SFT, within noise (benchmarks/README.md)."""
    ptx_seq_len: int = Field(64, ge=8)
    """Tokens per pretraining sequence of the ptx term (random windows of the packed corpus)."""
    is_clip_c: float = Field(2.0, gt=0.0)
    """Truncation c of the per-token importance weight `min(π_old / π_behaviour, c)` that corrects for
    rollouts sampled by an older policy (IMPALA's ρ̄ is 1)."""
    max_staleness: int = Field(4, ge=0)
    """Rollouts sampled more than this many policy versions ago are dropped (and counted)."""
    mode: Literal["async", "sync"] = "async"
    """`async`: generators, scorers and learner overlap (the actor/learner pipeline); `sync`: the same
    components strictly in sequence (generate -> score -> train -> publish), the throughput baseline."""
    total_steps: int = Field(100, ge=1)
    """Learner steps (batches of `batch_size` rollouts) of the PPO stage (the first round's; each iteration round
    runs `iterate.ppo_steps`). On the demo, win rate and true utility level off by about step 100."""
    sync_every: int = Field(1, ge=1)
    """Learner steps between published weight snapshots (each generator applies it before its next generate)."""
    prompts_per_request: int = Field(32, ge=1)
    """Prompts per generate call sent to one generator."""
    buffer_size: int = Field(128, ge=1)
    """Most rollouts in flight (generating + scoring + waiting for the learner); beyond it no new generation
    starts (backpressure), which bounds memory and staleness."""
    eval_every: int = Field(50, ge=0)
    """Learner steps between quick in-training evaluations (win rate vs SFT on held-out prompts); 0: none."""
    checkpoint_every: int = Field(10, ge=0)
    """Learner steps between checkpoints in <run>/checkpoints/ppo (learner weights, optimisers, KL controller, prompt
    cursor with the prompts in flight, sample ledger, reward normaliser). A lost learner is restored from the newest
    one and `raylhf ppo --resume` (and `raylhf run`) continue from it, so at most this many steps are redone. Each
    costs one save of policy + value + optimiser state (a few hundredths of a second for the tiny model, plus an
    fsync; proportional to model size); 0: only before the first step and at the end."""
    eval_prompts: int = Field(100, ge=1)
    """Held-out prompts of each in-training evaluation."""

"""The one typed config schema of raylhf.

Every field has a docstring (shown by `raylhf config --explain`). Values are validated when the
config is loaded: unknown keys, wrong types and out-of-range values are rejected with the key
path. Each component takes its own section whole (plus the few run-level values it needs); defaults
and validation live here only.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError


# Ray's own names for what `num_cpus` / `num_gpus` / `memory` already reserve.
_RAY_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def _cpu_ids(value: list[int]) -> list[int]:
    if any(c < 0 for c in value) or len(set(value)) != len(value):
        raise ValueError(f"expected distinct CPU ids >= 0 (as `taskset -c` numbers them), got {value}")
    return value


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    for name, amount in value.items():
        if name in _RAY_BUILTIN_RESOURCES:
            raise ValueError(f"{name!r} is set by num_cpus / num_gpus, not here")
        if amount <= 0:
            raise ValueError(f"{name!r}: amount must be > 0, got {amount}")
    return value


class Section(BaseModel):
    # allow_inf_nan=False: a NaN or infinite number in any field is a config error, never a silent poison.
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, frozen=True,
                              allow_inf_nan=False)


class TaskConfig(Section):
    name: str = "demo"
    """Task module under `tasks/` that supplies prompts, demonstrations, pretraining text and the labeler."""
    seed: int = 0
    """Seed of the task's world: every dataset it writes is a function of this seed."""
    n_train_prompts: int = Field(4000, ge=1)
    """Prompts in the training split (SFT demonstrations, comparisons and RL prompts are drawn from it)."""
    n_heldout_prompts: int = Field(300, ge=1)
    """Held-out prompts of the training distribution (the headline evaluation split)."""
    n_generalization_prompts: int = Field(300, ge=1)
    """Prompts with unseen words or a held-out family (reported separately)."""
    n_pretrain_docs: int = Field(20000, ge=1)
    """Documents in the pretraining corpus (a further 5 % is written as a held-out split)."""
    ramble_rate: float = Field(0.25, ge=0.0, le=1.0)
    """Fraction of demonstrations that ramble on after the answer, as a base model continues text."""
    verbose_rate: float = Field(0.10, ge=0.0, le=1.0)
    """Fraction of demonstrations that wrap the answer in needless words."""
    wrong_rate: float = Field(0.05, ge=0.0, le=1.0)
    """Fraction of demonstrations with a wrong answer."""
    labeler_noise: float = Field(0.23, ge=0.0)
    """Std of the Gaussian noise the simulated labeler adds to the hidden utility of each response;
    0.23 makes two labelers agree on ~73 % of the demo's fixed reference pairs of SFT-quality responses
    (InstructGPT: 72.6 ± 1.5 %). Recalibrate with `raylhf.tasks.demo.calibrate_labeler_noise` if the world changes."""
    heldout_share: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each family's prompt texts (picked by a stable hash of the text) reserved for the held-out
    split, so held-out prompts are never trained on."""
    generalization_family: Literal[
        "list", "repeat", "upper", "count", "reverse", "add", "starts_with", "count_down"
    ] = "count_down"
    """Instruction family kept out of training prompts and demonstrations; its prompts are in the
    generalization split only (the pretraining corpus still shows the skill)."""
    generalization_category: Literal[
        "fruit", "animal", "color", "vehicle", "drink", "flower", "instrument", "tool"
    ] = "tool"
    """Item category whose words never appear in training prompts or demonstrations; generalization prompts
    ask about it or use its words (the pretraining corpus still contains them)."""

    @model_validator(mode="after")
    def _flaw_rates_are_shares(self) -> "TaskConfig":
        if self.ramble_rate + self.verbose_rate + self.wrong_rate > 1.0:
            raise ValueError("ramble_rate + verbose_rate + wrong_rate must be <= 1 (they are shares of the "
                             f"demonstrations; got {self.ramble_rate} + {self.verbose_rate} + {self.wrong_rate})")
        return self


class DataConfig(Section):
    on_bad_rows: Literal["error", "skip"] = "error"
    """What a bad dataset row does: `error` stops with file, line and reason; `skip` counts, logs and drops it."""
    max_prompt_chars: int = Field(1024, ge=1)
    """Prompts longer than this many characters are bad rows."""


class ModelConfig(Section):
    preset: Literal["tiny", "small"] = "tiny"
    """Architecture of the demo base model: `tiny` (~1M parameters) or `small` (~10M), Llama-style."""
    vocab_size: int = Field(1024, ge=260, le=65536)
    """Byte-level BPE vocabulary size of the demo tokenizer (special tokens included)."""
    max_position_embeddings: int = Field(256, ge=32)
    """Longest sequence (prompt + response) the model handles."""


class PretrainConfig(Section):
    steps: int = Field(1000, ge=1)
    """Optimizer steps of base-model pretraining on the task's corpus (the demo's held-out loss is within
    0.02 nats of its 1,500-step value by then, at two thirds of the time)."""
    batch_size: int = Field(32, ge=1)
    """Sequences per step."""
    seq_len: int = Field(128, ge=8)
    """Tokens per training sequence (documents are packed)."""
    lr: float = Field(3e-3, gt=0.0)
    """Peak learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up steps."""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay."""


class SFTConfig(Section):
    epochs: int = Field(4, ge=1)
    """Passes over the demonstrations (InstructGPT: 16; the tiny demo overfits beyond a few)."""
    batch_size: int = Field(32, ge=1)
    """Demonstrations per step."""
    lr: float = Field(1e-3, gt=0.0)
    """Peak learning rate, cosine decay to 10 % of it."""
    residual_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on attention and residual paths during SFT (InstructGPT: 0.2)."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Max global gradient norm."""
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    """Fraction of demonstrations held out for validation loss and best-checkpoint selection."""


class RMConfig(Section):
    epochs: int = Field(1, ge=1)
    """Passes over the comparisons (InstructGPT: 1; more overfits)."""
    batch_prompts: int = Field(16, ge=1)
    """Prompts per step; each carries its K responses and all C(K,2) pairs."""
    lr: float = Field(3e-4, gt=0.0)
    """Peak learning rate, cosine decay."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Max global gradient norm."""
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Fraction of comparisons held out for pairwise accuracy."""


class CollectConfig(Section):
    k: int = Field(8, ge=2, le=9)
    """Responses ranked per prompt (InstructGPT: 4..9)."""
    n_prompts: int = Field(2000, ge=1)
    """Training prompts to collect rankings for (the first ones of the split; iteration rounds rank later ones).
    On the demo the RM's held-out accuracy moves by at most 0.02 from 375 to 3,000 prompts
    (`benchmarks/bench_rm_curves.py`)."""
    temperatures: list[float] = [0.7, 1.0, 1.4]
    """Sampling temperatures; responses of one prompt are spread over them for variety."""
    policies: list[str] = ["sft"]
    """Policies to sample from in `raylhf run`: stage names of the run (base, sft, ppo) or checkpoint paths.
    Responses of one prompt are spread over policies x temperatures (varied comparisons train a better RM)."""
    include_seed_comparisons: bool = True
    """Add the task's rankings of labeler-written responses (data/demo_comparisons.jsonl) to the RM data."""
    labeler_seed: int = 0
    """Seed of the (simulated) labeler who ranks the collected responses."""


class EvalConfig(Section):
    n_prompts: int = Field(300, ge=1)
    """Held-out prompts per split used to judge policies."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature of evaluated policies (1.0: the distribution PPO optimises)."""
    labeler_seed: int = 1000
    """Seed of the labeler who judges win rates; different from the collection labeler, as the paper held out
    labelers whose data was never trained on."""
    rm_eval_prompts: int = Field(200, ge=1)
    """Held-out prompts per split on which the reward model's pairwise accuracy is measured."""


class GenerationConfig(Section):
    engine: Literal["vllm", "hf"] = "vllm"
    """Generation backend: vLLM (default) or transformers `generate` (machines without vLLM; baseline)."""
    num_generators: int = Field(1, ge=1)
    """Generator actors."""
    num_cpus: float = Field(0.5, gt=0.0)
    """CPUs reserved per generator actor (fractions allowed); also its torch thread count."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs per generator actor; 0 runs on CPU."""
    resources: dict[str, float] = {}
    """Custom Ray resources each generator actor requires, e.g. `{generator_node: 1}`: pins generators to
    the nodes started with that resource (`ray start --resources='{"generator_node": 4}'`)."""
    _resources_valid = field_validator("resources")(_custom_resources)
    cpus: list[int] = []
    """CPU ids (Linux numbering) each generator actor is pinned to, every thread of its process; empty: not pinned.
    Ray's `num_cpus` only places actors, the OS still runs any process on any core; on a machine with as
    many cores as busy actors, pinning generators and scorers to one core and the learner to
    another keeps them from slowing each other's steps."""
    _cpus_valid = field_validator("cpus")(_cpu_ids)
    kv_cache_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    """KV-cache memory per vLLM engine, in bytes (on CPU vLLM would otherwise reserve a share of RAM)."""
    enforce_eager: bool = True
    """Skip vLLM's torch.compile/graph capture: ~3 s start instead of ~40 s, slower decoding."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature for RL rollouts (0 = greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling threshold."""
    max_new_tokens: int = Field(32, ge=1)
    """Longest response in tokens."""
    n: int = Field(1, ge=1)
    """Samples per prompt."""
    stop_token_ids: list[int] = []
    """Token ids that end a response besides EOS (which always does); the stop token is kept in the response."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight and activation dtype of the generation engine; published weight snapshots must carry this dtype."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "ERROR"
    """vLLM's log level inside generator actors (its start-up INFO/WARNING lines are verbose and harmless)."""
    in_flight: int = Field(2, ge=1)
    """Generate requests each generator keeps queued, so it never idles waiting for the driver."""
    weight_updates: Literal["between_calls", "in_flight"] = "between_calls"
    """When a generator applies a published weight snapshot. `between_calls`: after its running generate call
    (and any call queued before the snapshot arrived), so every token of a call comes from one policy version.
    `in_flight` (vLLM engine only): at the next step boundary inside the running call (PipelineRL-style), so
    generation never waits for a call to drain and new weights take effect within one decoding step. Requests
    then finish under a newer version than they started with: a rollout's `policy_version` stays the version
    it started under (the staleness filter stays conservative) and `last_version` records the version in force
    when it finished. The keys and values already in the KV cache of running requests were computed with the
    old weights (as in PipelineRL); the behaviour logprobs are still those of the distribution that sampled
    each token, which is what the learner's importance weights need."""

    @field_validator("weight_updates")
    @classmethod
    def _in_flight_needs_vllm(cls, v: str, info: ValidationInfo) -> str:
        # Only vLLM's engine exposes the step loop an update can be slotted into; HF `generate` is one call.
        if v == "in_flight" and info.data.get("engine") != "vllm":
            raise ValueError(f"`in_flight` needs `generation.engine: vllm` (got {info.data.get('engine')!r}); "
                             "the hf engine applies weights between calls only")
        return v


class PPOConfig(Section):
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
    num_cpus: float = Field(1.0, gt=0.0)
    """CPUs reserved for the learner actor (fractions allowed); its torch thread count is this, rounded,
    at least 1."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs for the learner actor; 0 trains on CPU."""
    resources: dict[str, float] = {}
    """Custom Ray resources the learner actor requires, e.g. `{learner_node: 1}` (pins it to those nodes)."""
    _resources_valid = field_validator("resources")(_custom_resources)
    cpus: list[int] = []
    """CPU ids (Linux numbering) the learner actor is pinned to, every thread of its process; empty: not pinned.
    Ray's `num_cpus` only places actors, the OS still runs any process on any core; on a machine with as
    many cores as busy actors, pinning the learner to a core of its own keeps generation and
    scoring from slowing its steps."""
    _cpus_valid = field_validator("cpus")(_cpu_ids)
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
    timeout_s: float = Field(600.0, gt=0.0)
    """Longest wait for any single remote call (generate, weight load, train step, publish, checkpoint) before
    its actor counts as hung: it is killed and replaced (see `max_consecutive_restarts`)."""
    actor_startup_timeout_s: float = Field(600.0, gt=0.0)
    """Longest wait for a new generator or learner to load its model, on top of `timeout_s` for its first call."""
    max_consecutive_restarts: int = Field(3, ge=0)
    """Replacements of one actor (a generator, or the learner) in a row without a successful call in between;
    one more failure ends the run with an error naming the actor and the cause. 0: no healing."""
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


class RewardSourceConfig(Section):
    kind: Literal["rm", "function", "token_function"] = "rm"
    """`rm`: the reward model's scalar at the last response token. `function`: a batched Python function
    `fn(prompts: list[str], responses: list[str], **kwargs) -> list[float]` over decoded text.
    `token_function`: the same over token ids, `fn(prompt_ids: list[list[int]], response_ids: list[list[int]],
    **kwargs) -> list[float]`."""
    weight: float = 1.0
    """Weight of this source in the reward: `reward = sum(weight_i * r_i)`, before normalisation and clipping."""
    path: str | None = None
    """Import path `package.module:function` of a `function` / `token_function` source (unset for `rm`)."""
    kwargs: dict[str, float | int | str | bool] = {}
    """Keyword arguments bound to the function, e.g. `{target_tokens: 24, coef: 0.05}`."""

    @field_validator("path")
    @classmethod
    def _import_path(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", v):
            raise ValueError("expected an import path 'package.module:function'")
        return v

    @model_validator(mode="after")
    def _path_matches_kind(self) -> "RewardSourceConfig":
        if self.kind == "rm" and (self.path is not None or self.kwargs):
            raise ValueError("an `rm` source takes no `path` or `kwargs`")
        if self.kind != "rm" and self.path is None:
            raise ValueError(f"a `{self.kind}` source needs `path: package.module:function`")
        return self


class RewardConfig(Section):
    rm_path: str | None = None
    """Reward-model checkpoint (HF directory with a one-label `*ForTokenClassification`, as the RM stage writes
    it, or `*ForSequenceClassification`); unset: the one the run's RM stage wrote. Needed only when a source
    is `rm`."""
    ref_path: str | None = None
    """Reference (SFT) policy checkpoint whose per-token logprobs the scorers return; unset: the run's SFT
    checkpoint."""
    ref_logprobs: bool = True
    """Compute reference logprobs in the scorers (off the learner's critical path). Off: `ref_logprobs` stays
    unset and whoever needs the KL term computes it."""
    tokenizer_path: str | None = None
    """Tokenizer used to decode text for `function` sources; unset: the reward model's, else the reference's."""
    sources: list[RewardSourceConfig] = [RewardSourceConfig()]
    """Reward sources and their weights, e.g. `[{kind: rm, weight: 1.0}, {kind: token_function,
    path: "raylhf.reward_service.rewards:length_penalty", weight: 1.0}]`."""
    normalize: Literal["none", "fixed", "running"] = "none"
    """Normalisation of the summed reward: `fixed` maps r to `(r - shift) * scale`; `running` whitens with the
    running mean/std of every reward scored so far (state saved with the pool); `none` leaves it raw."""
    shift: float = 0.0
    """`fixed` normalisation: subtracted from the reward (InstructGPT: the RM's mean score on demonstrations)."""
    scale: float = Field(1.0, gt=0.0)
    """`fixed` normalisation: multiplies the shifted reward."""
    clip: float | None = Field(None, gt=0.0)
    """Clip the final reward to [-clip, clip] after normalisation; unset: no clipping."""
    num_actors: int = Field(1, ge=1)
    """Scorer actors in the reward pool."""
    num_cpus: float = Field(0.5, gt=0.0)
    """CPUs reserved per scorer actor (fractions allowed); its torch thread count is this, rounded, at least 1."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs per scorer actor; 0 runs on CPU."""
    resources: dict[str, float] = {}
    """Custom Ray resources each scorer actor requires, e.g. `{scorer_node: 1}` (pins scorers to those nodes)."""
    _resources_valid = field_validator("resources")(_custom_resources)
    cpus: list[int] = []
    """CPU ids (Linux numbering) each scorer actor is pinned to, every thread of its process; empty: not pinned.
    Ray's `num_cpus` only places actors, the OS still runs any process on any core; on a machine with as
    many cores as busy actors, pinning scorers and generators to one core and the learner to
    another keeps them from slowing each other's steps."""
    _cpus_valid = field_validator("cpus")(_cpu_ids)
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and activations of the frozen models (logprobs are always computed in float32)."""
    max_tokens_per_microbatch: int = Field(4096, ge=1)
    """Padded tokens (rows x longest sequence) per forward pass; sequences are sorted by length first."""
    request_size: int = Field(64, ge=1)
    """Most rollouts per request a blocking `score()` sends to one actor (a large batch is spread over actors)."""
    max_in_flight: int = Field(2, ge=1)
    """Requests queued per actor; with every actor full, `submit` blocks (backpressure)."""
    request_timeout_s: float = Field(120.0, gt=0.0)
    """A request not answered this long after it reached the head of its actor's queue (actors serve requests in
    order) marks the actor hung: it is killed and replaced."""
    startup_timeout_s: float = Field(300.0, gt=0.0)
    """Longest wait for a scorer actor to load its models."""
    max_attempts: int = Field(3, ge=1)
    """Dispatches per request (first try included) before an actor death or timeout fails the run."""
    startup_attempts: int = Field(3, ge=1)
    """Starts tried for the replacement of a dead or hung scorer actor before the run fails with
    `ScorerStartupError` (the pool's first start, at construction, is tried once)."""
    startup_backoff_s: float = Field(2.0, ge=0.0)
    """Wait after a replacement actor failed to start, doubled after each further failure."""
    max_reject_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Share of scored rollouts that may be quarantined (unscorable: empty or too long, a token id outside a
    model's vocabulary, a non-finite score or reference logprob) before the run stops; checked once
    `reject_rate_min_rollouts` rollouts were seen."""
    reject_rate_min_rollouts: int = Field(256, ge=1)
    """Rollouts seen (scored plus quarantined) before `max_reject_rate` is enforced, so that a few early rejects
    do not stop a run."""

    @model_validator(mode="after")
    def _one_rm_source(self) -> "RewardConfig":
        if not self.sources:
            raise ValueError("`sources` needs at least one reward source")
        if sum(s.kind == "rm" for s in self.sources) > 1:
            raise ValueError("at most one `rm` source")
        return self


class IterateConfig(Section):
    rounds: int = Field(1, ge=0)
    """Rounds of iterated RLHF (InstructGPT step 4) after the first reward model and PPO stage, in `raylhf run`
    and `raylhf iterate`: each ranks samples of the current policy on fresh prompts, retrains the reward model
    on every comparison so far and continues PPO-ptx from the current policy against it; 0: none."""
    n_prompts: int = Field(1000, ge=1)
    """Fresh training prompts ranked per round: prompts no earlier round collected rankings on (the first
    round used `collect.n_prompts`); a run with rounds needs `collect.n_prompts + rounds x n_prompts <=
    task.n_train_prompts` (checked before it starts)."""
    policies: list[str] = ["current"]
    """Policies a round samples its K responses per prompt from: `current` (the policy the round continues),
    `sft`, `base`, `roundN` (the policy after round N; `round0` is the first PPO policy) or a checkpoint path.
    Responses of one prompt are spread over policies x `temperatures`."""
    temperatures: list[float] = [0.7, 1.0, 1.4]
    """Sampling temperatures of a round's comparisons (as `collect.temperatures`)."""
    samples_per_prompt: int = Field(24, ge=2)
    """Samples drawn per prompt in a round (spread over policies x temperatures), of which up to `collect.k`
    distinct ones are ranked: an aligned policy repeats its answers, so K samples give fewer than K distinct."""
    rm_init: Literal["sft", "previous"] = "sft"
    """Where a round's reward model starts: `sft`, a fresh scalar head on the SFT model (as the first reward
    model), or `previous`, the previous round's reward model (warm start). Either way it trains on all
    comparisons so far and is normalised on the demonstrations."""
    value_init: Literal["rm", "previous"] = "rm"
    """A round's PPO value function: `rm`, re-initialised from the round's new reward model (as in the first
    PPO stage), or `previous`, carried over from the previous round's PPO."""
    ppo_steps: int = Field(50, ge=1)
    """Learner steps of each round's PPO-ptx (the first PPO stage runs `ppo.total_steps`). The policy continues
    from the current one; the KL penalty stays against the SFT policy."""

    @field_validator("policies", "temperatures")
    @classmethod
    def _not_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("needs at least one entry")
        return v

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, v: list[float]) -> list[float]:
        if any(t < 0 for t in v):
            raise ValueError(f"temperatures must be >= 0, got {v}")
        return v


class RayConfig(Section):
    address: str | None = None
    """Ray cluster address; unset starts a local embedded Ray."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs the local Ray may use (default: all)."""
    include_dashboard: bool = False
    """Start the Ray dashboard (bound to `dashboard_host`)."""
    dashboard_host: str = "127.0.0.1"
    """Interface the dashboard binds to; 127.0.0.1 keeps it off the network."""
    resources: dict[str, float] = {}
    """Custom resources the local embedded Ray advertises (ignored when joining `address`), e.g. to try a
    placement (`generation.resources`, ...) on one machine."""
    _resources_valid = field_validator("resources")(_custom_resources)


class MetricsConfig(Section):
    enabled: bool = False
    """Serve live Prometheus metrics of the PPO stage (throughput, phase seconds, queue depths, staleness,
    faults, learner figures) over HTTP while it runs."""
    host: str = "127.0.0.1"
    """Interface the metrics endpoint binds to; 127.0.0.1 keeps it off the network (`0.0.0.0`: every interface)."""
    port: int = Field(0, ge=0, le=65535)
    """TCP port of the metrics endpoint; 0 picks a free one. The URL is logged and written to
    `<run>/metrics_endpoint.txt` while the endpoint is up."""
    linger_s: float = Field(0.0, ge=0.0)
    """Seconds the endpoint stays up after the stage finished, so a scraper reads the final values."""


class RunConfig(Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name: output goes to `<output_dir>/<name>/`."""
    output_dir: str = "runs"
    """Where runs are kept: a path (relative to the working directory; inside a submitted Ray job it must be
    absolute), or a storage URI `pyarrow.fs` opens (`file:///abs/path`, `s3://bucket/runs`, `gs://...`;
    options as a query string, e.g. `?endpoint_override=host:9000&scheme=http`). A URI run is worked on in
    `staging_dir` and mirrored to the URI after every stage and PPO checkpoint."""
    staging_dir: str | None = None
    """Local working copy of a run whose `output_dir` is a remote URI; default `~/.cache/raylhf/staging`."""
    seed: int = 0
    """Seed for model initialisation, data order and sampling."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device; `auto` picks CUDA when present, else CPU."""
    train_precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Forward-pass precision of the trainers: bf16 autocast (fp32 weights) when the device supports it natively."""
    torch_threads: int = Field(2, ge=1)
    """torch intra-op threads for in-driver training stages."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code when loaded. Off unless you trust the checkpoint."""
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    rm: RMConfig = RMConfig()
    collect: CollectConfig = CollectConfig()
    generation: GenerationConfig = GenerationConfig()
    eval: EvalConfig = EvalConfig()
    ppo: PPOConfig = PPOConfig()
    iterate: IterateConfig = IterateConfig()
    reward: RewardConfig = RewardConfig()
    ray: RayConfig = RayConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _sections_fit_together(self) -> "RunConfig":
        """Checks across sections; each error is reported at the key to change, naming the others."""
        errors = []

        def fail(loc: tuple[str, ...], value: Any, reason: str) -> None:
            errors.append(InitErrorDetails(type=PydanticCustomError("cross_field", "{reason}", {"reason": reason}),
                                           loc=loc, input=value))

        p, g, r = self.ppo, self.generation, self.reward
        per_call = p.prompts_per_request * g.n
        if p.buffer_size < max(p.batch_size, per_call):
            # A smaller buffer never holds a full batch or the output of one generate call: the run would stall.
            fail(("ppo", "buffer_size"), p.buffer_size,
                 f"must be at least one learner batch (ppo.batch_size = {p.batch_size}) and one generate call "
                 f"(ppo.prompts_per_request x generation.n = {p.prompts_per_request} x {g.n} = {per_call})")
        if self.ray.address is None:
            have = self.ray.num_cpus if self.ray.num_cpus is not None else os.cpu_count()
            need = g.num_generators * g.num_cpus + r.num_actors * r.num_cpus + p.num_cpus
            if have is not None and need > have + 1e-9:
                source = "ray.num_cpus" if self.ray.num_cpus is not None else "this machine's CPU count, ray.num_cpus unset"
                fail(("ray", "num_cpus"), self.ray.num_cpus,
                     f"the PPO actors need {need:g} CPUs (generation.num_generators x generation.num_cpus + "
                     f"reward.num_actors x reward.num_cpus + ppo.num_cpus = {g.num_generators} x {g.num_cpus:g} + "
                     f"{r.num_actors} x {r.num_cpus:g} + {p.num_cpus:g}) but the local Ray has {have} ({source}); "
                     "lower those, or join a cluster with ray.address")
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

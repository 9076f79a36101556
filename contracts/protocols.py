"""The seams between components, as Protocols so in-process fakes can stand in for tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from raylhf.contracts.records import Comparison, Demonstration, Prompt, Rollout
from raylhf.contracts.snapshot import WeightSnapshot


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample responses. Mirrors `generation.*` in the config."""

    n: int = 1  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    stop_token_ids: tuple[int, ...] = ()  # EOS is always a stop token
    # Base seed of one generate call: each request samples from a stream derived from
    # (seed, prompt_id), so results do not depend on batching. Vary it between calls (e.g. run
    # seed + step) or a prompt seen again under the same weights gets the same samples; None = fresh.
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    prompt_id: str
    prompt_ids: tuple[int, ...]  # [P] token ids, BOS included
    sampling: SamplingSpec | None = None  # overrides the batch's sampling spec for this request


@dataclass(frozen=True)
class RequestError:
    """A request the engine refused (empty prompt, too long, bad sampling value); others are served."""

    prompt_id: str
    reason: str


@runtime_checkable
class GenerationEngine(Protocol):
    """Samples responses with per-token behaviour logprobs; applies weight snapshots between calls."""

    @property
    def version(self) -> int: ...

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
    ) -> list[list[Rollout] | RequestError]:
        """One entry per request, in order: its `sampling.n` rollouts, or why it was refused."""
        ...

    def load_weights(self, snapshot: WeightSnapshot) -> None: ...


@runtime_checkable
class Scorer(Protocol):
    """Fills `score` (and `ref_logprobs` when a reference policy is configured) of each rollout."""

    def score(self, rollouts: Sequence[Rollout]) -> list[Rollout]: ...


@runtime_checkable
class Labeler(Protocol):
    """Ranks responses to a prompt: a simulated labeler, or a front end for human labelers."""

    def rank(self, prompt: str, responses: Sequence[str]) -> list[int]:
        """Response indices from best to worst."""
        ...

    def prefer(self, prompt: str, a: str, b: str) -> float:
        """1.0 if `a` is better, 0.0 if `b` is, 0.5 for a tie."""
        ...


@runtime_checkable
class Task(Protocol):
    """A source of prompts, demonstrations, pretraining text and judgement (e.g. the demo world)."""

    name: str

    def prompts(self, split: str) -> list[Prompt]:
        """Splits: "train", "heldout" (same distribution, never trained on), "generalization"."""
        ...

    def demonstrations(self) -> list[Demonstration]: ...

    def pretraining_corpus(self, split: str) -> list[str]:
        """Documents of web-like text; splits "train" and "heldout"."""
        ...

    def labeler(self, seed: int) -> Labeler: ...

    def seed_comparisons(self, n: int, k: int, seed: int) -> list[Comparison]:
        """Ranked comparisons of labeler-written responses: a first reward-model dataset before any policy
        has been sampled."""
        ...

    def tokenizer_corpus(self) -> Iterable[str]:
        """Text to train a tokenizer on (every split's vocabulary)."""
        ...

    def utility(self, prompt: str, response: str) -> float:
        """The hidden, noiseless quality of a response (what labelers approximate)."""
        ...

    def family(self, prompt: str) -> str:
        """The instruction family of a prompt, for per-family reports."""
        ...

    def follows_instruction(self, prompt: str, response: str) -> bool:
        """Whether the response does what the prompt asks (correct and satisfies its constraint)."""
        ...


@runtime_checkable
class ContrastingTask(Protocol):
    """A task that can tell what separates two of its responses (optional): reward-model accuracy is then
    reported per kind of contrast, e.g. a correct answer against a wrong one, a concise against a rambling one."""

    def contrast(self, prompt: str, a: str, b: str) -> str:
        """The kind of difference between responses `a` and `b` (symmetric in them)."""
        ...


# ---------------------------------------------------------------------------------------------------------
# The driver's seams. The driver holds generator and learner *actors* (it calls `.remote` on the methods
# below and waits on the refs through `raylhf.contracts.remote`) and one in-process scoring pool. Test fakes
# implement the same Protocols.


@runtime_checkable
class GeneratorService(Protocol):
    """What a generator actor serves (`raylhf.actors.generator.GeneratorActor`). Calls run one at a time
    in submission order, so a weight load never interleaves with a generate call; except on an in-flight
    generator (`GeneratorActorInFlight`), where a load sent to its `weights` concurrency group is applied
    inside the running generate call."""

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSpec
    ) -> list[list[Rollout] | RequestError]: ...

    def load_weights(self, snapshot: WeightSnapshot) -> int:
        """Apply a snapshot (passed as its ObjectRef, resolved by Ray); returns the version afterwards."""
        ...

    def checksums(self) -> dict[str, str]:
        """Per-tensor checksums of the weights the engine computes with (read back from it)."""
        ...

    def ready(self) -> ActorInfo:
        """Returns once the engine can generate (details: engine, version, context_len, vocab_size, start_s)."""
        ...


@runtime_checkable
class LearnerService(Protocol):
    """What the learner actor serves (`raylhf.learners.ppo_actor.PPOLearnerActor`)."""

    def train_step(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        """One PPO update on a batch of scored rollouts; returns its metrics."""
        ...

    def publish(self, advance: bool = True) -> tuple[int, Any]:
        """Advance the version (unless `advance` is False) and `ray.put` the policy's `WeightSnapshot` once:
        ``(version, ObjectRef)``."""
        ...

    def ready(self) -> ActorInfo:
        """Returns once the models are loaded (details: version, sizes, device)."""
        ...

    def save_checkpoint(self, path: str, driver_node_id: str | None = None) -> dict[str, bytes] | None:
        """Write a checkpoint to `path`, or, from a node other than the driver's, return its files."""
        ...

    def load_checkpoint(self, path: Any) -> int:
        """Restore a checkpoint (a path or `ModelFiles`); returns the restored version."""
        ...


@dataclass(frozen=True)
class ActorInfo:
    """What every actor's `ready()` answers once it can serve: who it is, where it runs, what it loaded."""

    name: str
    pid: int
    node_id: str  # the Ray node it runs on
    cpus: list[int]  # CPU ids its process may run on (all of the node's unless pinned)
    host: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # per kind: engine, version, sizes, threads, ...


@dataclass(frozen=True)
class ScorerStats:
    """One scorer slot's figures, over all its restarts."""

    restarts: int
    completed: int  # requests answered
    in_flight: int
    busy_s: float  # seconds with a request running (head of its queue to its answer)


@dataclass(frozen=True)
class PoolStats:
    """What a scoring pool counted (`ScoringPool.stats`)."""

    requests: int = 0
    rollouts_scored: int = 0
    resubmitted: int = 0  # requests handed to a replacement actor
    failures: int = 0  # requests that failed with a `ScoringError`
    rejected: int = 0  # rollouts quarantined
    rejected_by_cause: dict[str, int] = field(default_factory=dict)
    reject_rate: float = 0.0
    in_flight: int = 0
    completed_waiting: int = 0
    # Seconds the actors had a request running, summed over actors: divided by wall time and actor count,
    # the pool's busy fraction.
    busy_s: float = 0.0
    actors: dict[str, ScorerStats] = field(default_factory=dict)
    reward_running_mean: float = 0.0
    reward_running_std: float = 1.0


@runtime_checkable
class ScoringPool(Protocol):
    """Scores rollouts on a pool of scorer actors (`raylhf.reward_service.pool.RewardPool`), in process.

    `submit`/`ready` overlap scoring with other work (the async driver); `score` blocks (the sync driver).
    """

    def has_capacity(self) -> bool: ...

    def submit(self, rollouts: Sequence[Rollout], block: bool = True, timeout: float | None = None) -> int:
        """Queue one request; returns its id."""
        ...

    def ready(self, timeout: float = 0.0) -> list[tuple[int, list[Rollout]]]:
        """Completed requests as ``(request_id, scored rollouts in request order)``; a rollout that could not
        be scored (NaN reward, token out of vocabulary) is quarantined and left out."""
        ...

    def score(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        """Score a batch, blocking; quarantined rollouts are left out."""
        ...

    def stats(self) -> PoolStats: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def shutdown(self) -> None: ...

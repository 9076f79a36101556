"""Typed records that cross component boundaries, with their pyarrow schemas.

Every record is a plain dataclass so it pickles cheaply through Ray and needs no third-party
import here. Array fields are lists (JSON-friendly) whose shape is given in a comment; the
pyarrow schema of each record is the on-disk contract for Parquet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

# InstructGPT collects rankings of K = 4..9 responses; K = 2 is a plain pairwise comparison.
MIN_RESPONSES = 2
MAX_RESPONSES = 9

# A conversation as {role, content} turns (roles system, user, assistant), on disk and in memory.
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@dataclass
class Prompt:
    """One instruction sent to the policy."""

    prompt_id: str
    prompt: str
    # the conversation before the response as {role, content} turns (roles system, user, assistant), ending
    # with a user turn, whose content is `prompt`; None: `prompt` is the whole prompt text
    messages: list[dict[str, str]] | None = None

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("messages", MESSAGES_TYPE, nullable=True),
        ]
    )


@dataclass
class Demonstration:
    """A prompt and a labeler-written response, the SFT training data."""

    prompt_id: str
    prompt: str
    response: str
    # the conversation before the response as {role, content} turns (roles system, user, assistant), ending
    # with a user turn, whose content is `prompt`; None: `prompt` is the whole prompt text
    messages: list[dict[str, str]] | None = None

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("response", pa.string(), nullable=False),
            pa.field("messages", MESSAGES_TYPE, nullable=True),
        ]
    )


@dataclass
class Comparison:
    """K responses to one prompt and a labeler's ranking of them.

    `ranking` lists response indices from best to worst, a permutation of 0..K-1
    (the same convention as the `order` argument of `ranking_loss`). `round` and `source` say where the
    row came from in an iterated run; `labeler` and `tied` who ranked it and which neighbours they found equally
    good. Files written without them load with the defaults.
    """

    prompt_id: str
    prompt: str
    responses: list[str]  # [K], 2 <= K <= 9
    ranking: list[int]  # [K], best -> worst
    round: int = 0  # iteration round that collected the row (0: the first reward model's data)
    source: str = ""  # policies the responses were sampled from, "+"-joined (e.g. "round0+sft"); "seed": written by the task
    # the conversation before the response as {role, content} turns (roles system, user, assistant), ending
    # with a user turn, whose content is `prompt`; None: `prompt` is the whole prompt text
    messages: list[dict[str, str]] | None = None
    labeler: str = ""  # id of the human labeler who ranked it; "": the task's simulated labeler
    # [K-1] tied[i]: ranking[i] and ranking[i+1] are equally good (ties chain: a run of True is one tie group);
    # tied pairs are never trained on. None: no ties
    tied: list[bool] | None = None

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("responses", pa.list_(pa.string()), nullable=False),
            pa.field("ranking", pa.list_(pa.int32()), nullable=False),
            pa.field("round", pa.int32(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("messages", MESSAGES_TYPE, nullable=True),
            pa.field("labeler", pa.string(), nullable=True),  # null: the default
            pa.field("tied", pa.list_(pa.bool_()), nullable=True),
        ]
    )
    # Left out of a row while they hold their defaults, so the simulated labeler's rows are written byte for
    # byte as before these fields existed (and older readers of our files see nothing new).
    OMITTED_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("labeler", "tied")


@dataclass
class Rollout:
    """One sampled response with everything the learner needs to train on it.

    Produced by a generator (ids, behaviour logprobs, version, finish reason), completed by the
    reward service (score, ref_logprobs). `staleness = learner_version - policy_version`.

    Versions. `policy_version` is the version in force when the generate call that produced the rollout
    began, so the staleness above never understates. With in-flight weight updates
    (`generation.weight_updates: in_flight`) a snapshot can be applied between two decoding steps of a
    running request: then `last_version` is the version in force when the request finished, and the
    tokens came from the versions `policy_version..last_version` (the KV cache of tokens already computed
    keeps the older weights' keys and values). None means every token came from `policy_version` (weights
    are applied between calls only). With `n > 1` samples per prompt the request finishes with its last
    sample, so for each sample the span is an upper bound. `logprobs` are recorded by the engine per token
    from the distribution that sampled that token, whatever weights were in force then, so they remain
    the exact behaviour probabilities across an update.
    """

    prompt_id: str
    prompt_ids: list[int]  # [P] prompt token ids, BOS included
    response_ids: list[int]  # [T] sampled token ids, EOS included when finish_reason == "eos"
    logprobs: list[float]  # [T] behaviour logprob of each sampled token under the sampling distribution
    policy_version: int
    finish_reason: str  # "eos" | "length" | "stop"
    score: float | None = None  # scalar reward of the whole response (set by the reward service)
    ref_logprobs: list[float] | None = None  # [T] reference (SFT) policy logprobs of response_ids
    t_generated: float = 0.0  # unix time the response finished generating
    t_scored: float = 0.0  # unix time the reward service scored it
    sample_id: str = ""  # unique per rollout, for matching requests to results
    last_version: int | None = None  # version in force when it finished; None: all tokens from policy_version

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("response_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("logprobs", pa.list_(pa.float32()), nullable=False),
            pa.field("policy_version", pa.int64(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=False),
            pa.field("score", pa.float64(), nullable=True),
            pa.field("ref_logprobs", pa.list_(pa.float32()), nullable=True),
            pa.field("t_generated", pa.float64(), nullable=False),
            pa.field("t_scored", pa.float64(), nullable=False),
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("last_version", pa.int64(), nullable=True),
        ]
    )

    def spans_versions(self) -> bool:
        """Whether a weight update landed while this rollout was being generated."""
        return self.last_version is not None and self.last_version != self.policy_version


@dataclass
class Document:
    """One document of pretraining text (the corpus of the PPO-ptx mix and of the demo base model)."""

    doc_id: str
    text: str

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [pa.field("doc_id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False)]
    )


RECORD_TYPES: dict[str, type] = {
    "prompts": Prompt,
    "demonstrations": Demonstration,
    "comparisons": Comparison,
    "rollouts": Rollout,
    "documents": Document,
}


def to_row(record: Any) -> dict[str, Any]:
    """The record as a plain dict, without the `OMITTED_AT_DEFAULT` fields that hold their default (Parquet
    stores those as null; both load as the default)."""
    row = dataclasses.asdict(record)
    defaults = {f.name: f.default for f in dataclasses.fields(record)}
    for name in getattr(record, "OMITTED_AT_DEFAULT", ()):
        if row[name] == defaults[name]:
            del row[name]
    return row


def record_fields(record_type: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(record_type) if f.name != "SCHEMA"]


__all__ = [
    "Prompt",
    "Demonstration",
    "Comparison",
    "Rollout",
    "Document",
    "RECORD_TYPES",
    "MIN_RESPONSES",
    "MAX_RESPONSES",
    "MESSAGES_TYPE",
    "to_row",
    "record_fields",
]

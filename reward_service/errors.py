"""Errors of the reward service. A failed score is always one of these, never a reward of 0."""

from __future__ import annotations

from raylhf.configs.loader import ConfigError


class RewardConfigError(ConfigError):
    """A reward setting that cannot work (e.g. an import path that does not resolve); names the key."""


class ScoringError(RuntimeError):
    """Scoring a batch failed; names the actor (None in-process), the request and the cause."""

    def __init__(self, message: str, *, actor: str | None = None, request_id: int | None = None, cause: str = ""):
        super().__init__(message)
        self.actor = actor
        self.request_id = request_id
        self.cause = cause


class ScorerStartupError(ScoringError):
    """A scorer actor did not come up (its models failed to load, or it took longer than the timeout)."""


class PoolFullError(RuntimeError):
    """Every scorer actor already holds `max_in_flight` requests (raised by a non-blocking `submit`)."""

"""How the PPO stage supervises its actors (`supervision`): one set of limits for every kind of actor
(generators, scorers, the learner), each of which a kind may override (`supervision.scorer.call_timeout_s`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from raylhf.configs.sections.base import Section
from raylhf.contracts.supervision import ACTOR_KINDS, ActorKind, SupervisionPolicy

# The bounds of each limit, shared by the defaults and the per-kind overrides so both validate alike.
_Seconds = Annotated[float, Field(gt=0.0)]
_Count = Annotated[int, Field(ge=0)]
_Wait = Annotated[float, Field(ge=0.0)]
_Attempts = Annotated[int, Field(ge=1)]


class SupervisionOverride(Section):
    """One kind's values of the `supervision` limits; an unset (null) field inherits the section's."""

    call_timeout_s: _Seconds | None = None
    """`supervision.call_timeout_s` for this kind of actor; unset (null): the section-wide value."""
    startup_timeout_s: _Seconds | None = None
    """`supervision.startup_timeout_s` for this kind of actor; unset (null): the section-wide value."""
    max_consecutive_restarts: _Count | None = None
    """`supervision.max_consecutive_restarts` for this kind of actor; unset (null): the section-wide value."""
    backoff_s: _Wait | None = None
    """`supervision.backoff_s` for this kind of actor; unset (null): the section-wide value."""
    max_attempts: _Attempts | None = None
    """`supervision.max_attempts` for this kind of actor; unset (null): the section-wide value."""


class ScorerSupervisionOverride(SupervisionOverride):
    """The scorers' overrides. Their defaults live on the class, not on an instance, so that a config setting
    one scorer key (`supervision.scorer.max_attempts: 5`) keeps the others."""

    call_timeout_s: _Seconds | None = 120.0
    """`supervision.call_timeout_s` for scorers: a scoring call is short, so a scorer silent for two minutes is
    hung, not busy; unset (null): the section-wide value."""
    startup_timeout_s: _Seconds | None = 300.0
    """`supervision.startup_timeout_s` for scorers, which load frozen models only (no inference engine to
    build, no optimiser state); unset (null): the section-wide value."""


class SupervisionConfig(Section):
    call_timeout_s: _Seconds = 600.0
    """Longest wait for a remote call (generate, weight load, train step, scoring request, checkpoint) once it is
    at the head of its actor's queue (actors serve calls in order, so the clock starts when the call before it
    answered); beyond it the actor counts as hung and is killed and replaced (scorers: 120 s,
    `supervision.scorer`)."""
    startup_timeout_s: _Seconds = 600.0
    """Longest wait for a new actor to load its models, on top of `call_timeout_s` for its first call (scorers:
    300 s, `supervision.scorer`)."""
    max_consecutive_restarts: _Count = 3
    """Replacements of one actor in a row without a successful call between them; one more failure ends the run
    with an error naming the actor and the cause. 0: no healing."""
    backoff_s: _Wait = 2.0
    """Wait before starting a replacement again after the previous replacement of the same actor failed without
    progress, doubled after each further failure (the first replacement starts at once)."""
    max_attempts: _Attempts = 3
    """Dispatches of one unit of work (a scoring request, a generate call) before losing it again fails the run."""
    generator: SupervisionOverride = SupervisionOverride()
    """Overrides for the generator actors."""
    scorer: ScorerSupervisionOverride = ScorerSupervisionOverride()
    """Overrides for the scorer actors of the reward pool."""
    learner: SupervisionOverride = SupervisionOverride()
    """Overrides for the learner actor."""

    def policy(self, kind: ActorKind) -> SupervisionPolicy:
        """The limits of one kind of actor: its override where set, else the section's value."""
        if kind not in ACTOR_KINDS:
            raise ValueError(f"unknown actor kind {kind!r}; expected one of {', '.join(ACTOR_KINDS)}")
        override: SupervisionOverride = getattr(self, kind)
        resolved = {}
        for name in SupervisionOverride.model_fields:
            value = getattr(override, name)
            resolved[name] = getattr(self, name) if value is None else value
        return SupervisionPolicy(**resolved)

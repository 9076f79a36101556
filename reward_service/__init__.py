"""Scoring: the frozen reward model, the reference policy and programmatic rewards, as a Ray actor pool.

`RewardScorer` does the math in-process (no Ray); `ScorerActor` hosts one on Ray; `RewardPool`
dispatches batches over N actors with backpressure, timeouts and replacement of lost actors.
"""

from raylhf.reward_service.errors import PoolFullError, RewardConfigError, ScorerStartupError, ScoringError
from raylhf.reward_service.normalize import RewardTransform
from raylhf.reward_service.programmatic import RewardSource, load_reward_function, sources_from_config
from raylhf.reward_service.scorer import RewardScorer

__all__ = [
    "PoolFullError",
    "RewardConfigError",
    "RewardScorer",
    "RewardSource",
    "RewardTransform",
    "ScorerStartupError",
    "ScoringError",
    "load_reward_function",
    "sources_from_config",
]

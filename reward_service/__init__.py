"""Scoring: the frozen reward model, the reference policy and programmatic rewards, as a Ray actor pool.

`RewardScorer` (`scorer`) does the math in-process (no Ray); `ScorerActor` (`actor`) hosts one on Ray;
`RewardPool` (`pool`) dispatches batches over N actors with backpressure, timeouts and replacement of
lost actors; `RewardTransform` (`normalize`) normalises and clips; `ProgrammaticReward` (`programmatic`)
is one reward function loaded by import path; a rollout that cannot be scored becomes a `Reject`
(`rejects`: quarantined, counted, written to the rejects file, never given a reward). Scorer, actor,
pool and transform take the `RewardConfig` section whole. The Ray modules (`actor`, `pool`) are not
imported here: importing the package does not import Ray.
"""

from raylhf.reward_service.errors import PoolFullError, RewardConfigError, ScorerStartupError, ScoringError
from raylhf.reward_service.normalize import RewardTransform
from raylhf.reward_service.programmatic import ProgrammaticReward, load_reward_function
from raylhf.reward_service.rejects import Reject, RejectLog
from raylhf.reward_service.scorer import RewardScorer

__all__ = [
    "PoolFullError",
    "ProgrammaticReward",
    "Reject",
    "RejectLog",
    "RewardConfigError",
    "RewardScorer",
    "RewardTransform",
    "ScorerStartupError",
    "ScoringError",
    "load_reward_function",
]

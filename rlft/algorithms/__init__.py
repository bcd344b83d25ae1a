"""RL algorithms: each owns its advantage rule, its loss, its optimization loop and its state."""

from rlft.algorithms.base import Algorithm
from rlft.algorithms.ddpo import DDPO, DDPOScoreFunction, ppo_clipped_loss, score_function_loss
from rlft.algorithms.grpo import GRPO
from rlft.algorithms.kl import KLRegularization
from rlft.algorithms.rwr import FilterAndFinetune, RewardWeightedRegression
from rlft.algorithms.tdpo import TDPO

__all__ = [
    "DDPO",
    "GRPO",
    "TDPO",
    "Algorithm",
    "DDPOScoreFunction",
    "FilterAndFinetune",
    "KLRegularization",
    "RewardWeightedRegression",
    "ppo_clipped_loss",
    "score_function_loss",
]

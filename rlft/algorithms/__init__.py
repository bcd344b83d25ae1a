"""RL algorithms: each owns its advantage rule, its loss and its state."""

from rlft.algorithms.base import Algorithm
from rlft.algorithms.ddpo import DDPO, ppo_clipped_loss

__all__ = ["DDPO", "Algorithm", "ppo_clipped_loss"]

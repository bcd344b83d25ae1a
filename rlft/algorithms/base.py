"""What the RL module asks of an algorithm, and what it offers one to train with."""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

import torch
from omegaconf import DictConfig

from rlft.policy import Policy
from rlft.trajectories import Trajectories


class Learner(Protocol):
    """The training side of the RL module: the policy, the config and the optimizer."""

    policy: Policy
    cfg: DictConfig

    def backpropagate(self, loss: torch.Tensor) -> None: ...

    def optimizer_step(self) -> None: ...

    def progress(self, total: int): ...


class Algorithm:
    """An advantage (or weighting) rule and the epoch's optimization, with checkpointable state."""

    def advantages(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rewards (N,) of the whole epoch, gathered over ranks, to advantages or weights (N,)."""
        raise NotImplementedError

    def optimize(self, learner: Learner, trajectories: Trajectories, generator: torch.Generator) -> dict[str, float]:
        """Train on this process's trajectories (advantages already set); returns mean metrics."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MetricMeans:
    """Collects per-micro-step metrics and averages them at the end of the epoch."""

    def __init__(self):
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(self, **metrics: torch.Tensor) -> None:
        for key, value in metrics.items():
            self.values[key].append(value.detach())

    def means(self) -> dict[str, float]:
        return {key: torch.stack(values).float().mean().item() for key, values in self.values.items()}

"""What the RL module asks of an algorithm."""

from __future__ import annotations

import torch


class Algorithm:
    """An advantage rule plus a per-(sample, timestep) loss, with checkpointable state."""

    def advantages(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rewards (N,) of the whole epoch, gathered over ranks, to advantages (N,)."""
        raise NotImplementedError

    def loss(
        self, log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one minibatch at one timestep column and its diagnostics."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

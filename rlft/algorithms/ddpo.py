"""DDPO with importance sampling and PPO clipping (ALGORITHMS.md §3)."""

from __future__ import annotations

import torch

from rlft.algorithms.base import Algorithm
from rlft.algorithms.stat_tracker import PerPromptStatTracker


def ppo_clipped_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))."""
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        metrics = {
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio": ratio.mean(),
        }
    return loss, metrics


class DDPO(Algorithm):
    def __init__(
        self,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        per_prompt_stat_tracking: bool = True,
        stat_buffer_size: int = 16,
        stat_min_count: int = 16,
    ):
        self.clip_range = clip_range
        self.adv_clip_max = adv_clip_max
        self.tracker = PerPromptStatTracker(stat_buffer_size, stat_min_count) if per_prompt_stat_tracking else None

    def advantages(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        values = rewards.double().cpu().numpy()
        if self.tracker is not None:
            advantages = self.tracker.update(prompts, values)
        else:
            advantages = (values - values.mean()) / (values.std() + 1e-8)
        return torch.as_tensor(advantages, dtype=torch.float32).clamp(-self.adv_clip_max, self.adv_clip_max)

    def loss(self, log_prob, old_log_prob, advantages):
        return ppo_clipped_loss(log_prob, old_log_prob, advantages, self.clip_range)

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict() if self.tracker else None}

    def load_state_dict(self, state: dict) -> None:
        if self.tracker is not None and state.get("tracker") is not None:
            self.tracker.load_state_dict(state["tracker"])

"""KL regularization towards the base model (docs/algorithms.md#kl-regularization).

During sampling the frozen reference policy scores the same sampled actions; each step's
log-ratio delta = log pi_theta - log pi_ref becomes a penalty that is subtracted from the reward
(TDPO: from every step's return; DDPO: summed over the steps of a sample).
"""

from __future__ import annotations

import math

import torch

from rlft.errors import ConfigError


def kl_penalty(log_prob: torch.Tensor, reference_log_prob: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-step penalty from the policy's and the reference's log-probs of the same action."""
    delta = log_prob - reference_log_prob
    if kind == "kl":
        return delta
    if kind == "abs":
        return delta.abs()
    if kind == "square":
        return 0.5 * delta**2
    if kind == "clip":
        return delta.clamp(min=0)
    if kind == "approx":
        return torch.expm1(delta) - delta
    if kind == "js":
        # m = (pi + pi_ref) / 2, computed in log space: log m = logaddexp(log pi, log pi_ref) - log 2
        log_m = torch.logaddexp(log_prob, reference_log_prob) - math.log(2.0)
        return 0.5 * ((log_prob - log_m).clamp(min=0) + (reference_log_prob - log_m).clamp(min=0))
    raise ConfigError(f"algorithm.kl.penalty={kind!r} is not one of {sorted(PENALTIES)}")


PENALTIES = ("kl", "abs", "square", "clip", "approx", "js")


class KLController:
    """beta_KL: fixed, or adapted once per epoch towards a target KL (Ziegler et al. 2019)."""

    def __init__(self, init_kl_coef: float = 0.2, target: float | None = None, horizon: int = 2000):
        if target is not None and target <= 0:
            raise ConfigError(f"algorithm.kl.target={target} must be positive, or null for a fixed coefficient")
        self.value = float(init_kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, mean_kl: float, num_samples: int) -> None:
        if self.target is None:
            return
        error = min(max(mean_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_samples / self.horizon


class KLRegularization:
    """`coef` x (-beta_KL x penalty) is added to the rewards; coef = 0 switches it off (the default)."""

    def __init__(
        self,
        coef: float = 0.0,
        penalty: str = "clip",
        init_kl_coef: float = 0.2,
        target: float | None = None,
        horizon: int = 2000,
    ):
        if penalty not in PENALTIES:
            raise ConfigError(f"algorithm.kl.penalty={penalty!r} is not one of {list(PENALTIES)}")
        if coef < 0:
            raise ConfigError(f"algorithm.kl.coef={coef} must be >= 0 (0 switches KL regularization off)")
        self.coef = coef
        self.penalty = penalty
        self.controller = KLController(init_kl_coef, target, horizon)

    @property
    def enabled(self) -> bool:
        return self.coef > 0

    def reward_terms(self, log_probs: torch.Tensor, reference_log_probs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Per-step reward terms (N, T) for this epoch's gathered samples, and the KL metrics; then
        adapts beta_KL to this epoch's KL."""
        log_probs, reference_log_probs = log_probs.double(), reference_log_probs.double()
        terms = self.coef * -self.controller.value * kl_penalty(log_probs, reference_log_probs, self.penalty)
        delta = log_probs - reference_log_probs
        metrics = {
            "mean_kl": delta.sum(dim=1).mean().item(),
            "mean_kl_per_step": delta.mean().item(),
            "kl_coef": self.controller.value,
        }
        self.controller.update(metrics["mean_kl"], len(log_probs))
        return terms, metrics

    def state_dict(self) -> dict:
        return {"kl_coef": self.controller.value}

    def load_state_dict(self, state: dict) -> None:
        self.controller.value = float(state["kl_coef"])

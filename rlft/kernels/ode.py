"""The deterministic Euler step of the flow ODE, x' = x + delta v (docs/algorithms.md#the-ode-step).

Used for the steps of a chain that are not stochastic (outside an SDE window, or all of them at
evaluation). It returns a Transition like the stochastic kernels, so that a sampler loop treats
every step alike, with std = 0 and log_prob = None: a deterministic step's distribution is a point
mass, which has no density, and a number in its place (DDIM's floored log-prob at eta = 0 is one)
would flow silently into ratios and KL terms; None makes such a use fail at once.
"""

from __future__ import annotations

import torch

from rlft.kernels.base import Transition
from rlft.kernels.flow import Sigma, as_sigma, check_step


def euler_transition(sample: torch.Tensor, velocity: torch.Tensor, sigma: Sigma, sigma_next: Sigma) -> Transition:
    """x' = x + (s' - s) v in float32, returned in the sample's dtype; mean = the float32 x'."""
    check_step(sigma, sigma_next)
    x = sample.float()
    delta = as_sigma(sigma_next, x) - as_sigma(sigma, x)
    mean = x + velocity.float() * delta
    return Transition(mean.to(sample.dtype), None, mean, torch.zeros((), dtype=torch.float32, device=x.device))

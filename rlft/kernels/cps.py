"""Coefficients-preserving sampling (CPS) for a rectified flow
(docs/algorithms.md#coefficients-preserving-sampling).

The step from s to s' rebuilds x' on the flow's own line: with x0_hat = x - s v and
eps_hat = x + (1 - s) v,

    std = s' sin(a pi / 2),   mean = (1 - s') x0_hat + sqrt(s'^2 - std^2) eps_hat,   x' = mean + std z.

If x0_hat and eps_hat were exact, x' = (1 - s') x0 + [sqrt(s'^2 - std^2) eps + std z], whose noise
has variance s'^2 exactly: the coefficients of x_{s'} = (1 - s') x0 + s' eps are preserved, where an
SDE step's added noise can overshoot them. At a = 0 it is the deterministic step
(1 - s') x0_hat + s' eps_hat, which equals the Euler step x + delta v algebraically.

The log-prob keeps the Gaussian's normalisation (-log std - log sqrt(2 pi)) and its 1/(2 std^2):
the reference implementations score -(x' - mean)^2 alone, which is not a log-density (the missing
1/(2 std^2) rescales each step's log-ratio by 2 std^2). At a = 0, or at the final step s' = 0
(std = 0), the step is deterministic and log_prob is None (for s' given as a number; a per-sample
tensor holding 0 gets the floored density of rlft/kernels/base.py at those samples).
"""

from __future__ import annotations

import math
import numbers

import torch

from rlft.kernels.base import Transition, check_either, gaussian_log_prob, take_action
from rlft.kernels.flow import Sigma, as_sigma, check_scale, check_step, predicted_clean, predicted_noise

CPS_NOISE_LEVEL = 0.7


def cps_transition(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: Sigma,
    sigma_next: Sigma,
    *,
    noise_level: float = CPS_NOISE_LEVEL,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> Transition:
    """One CPS step from `sigma` to `sigma_next` given the predicted `velocity`; noise_level a in
    [0, 1]. Either `noise` (standard normal, from the caller's RandomStream) draws the action, or
    `prev_sample` is the stored action to re-score. Float32 arithmetic; the action comes back in the
    sample's dtype and is scored as returned."""
    check_either(noise, prev_sample)
    check_step(sigma, sigma_next)
    check_scale("noise_level", noise_level, upper=1.0)
    x = sample.float()
    v = velocity.float()
    s = as_sigma(sigma, x)
    s_next = as_sigma(sigma_next, x)
    std = s_next * math.sin(noise_level * math.pi / 2)
    # s'^2 - std^2 = s'^2 cos^2(a pi / 2) >= 0; the clamp only guards rounding at a = 1.
    mean = (1 - s_next) * predicted_clean(x, v, s) + (s_next**2 - std**2).clamp(min=0).sqrt() * predicted_noise(x, v, s)
    action = take_action(mean, std, noise, prev_sample, sample.dtype)
    deterministic = noise_level == 0 or (isinstance(sigma_next, numbers.Real) and sigma_next == 0)
    return Transition(action, None if deterministic else gaussian_log_prob(action, mean, std), mean, std)

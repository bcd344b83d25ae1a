"""Stochastic steps of a rectified flow: Flow-GRPO's SDE kernel and DanceGRPO's constant-coefficient
one (docs/algorithms.md#the-flow-grpo-sde-kernel, docs/algorithms.md#dancegrpos-constant-coefficient-kernel).

Derivation. The flow's marginals p_s are those of x_s = (1 - s) x0 + s eps; the ODE dx = v ds
(v = E[eps - x0 | x_s]) transports them. For any diffusion coefficient g(s), the forward SDE
dx = [v + (g^2/2) grad log p_s] ds + g dW has the same Fokker-Planck equation (its probability-flow
velocity is f - (g^2/2) grad log p_s = v), and its time reversal, run with ds = delta < 0, is

    dx = [v - (g^2/2) grad log p_s] delta + g sqrt(-delta) z,   z ~ N(0, I).

Given x, x_s | x0 ~ N((1 - s) x0, s^2 I), so grad log p_s(x) = -(x - (1 - s) x0_hat) / s^2 with
x0_hat = E[x0 | x] = x - s v; that simplifies to -(x + (1 - s) v) / s = -eps_hat / s. One
Euler-Maruyama step is therefore Gaussian with

    mean = x + [v + (g^2 / (2 s)) (x + (1 - s) v)] delta,   std = g sqrt(-delta).

Flow-GRPO takes g = a sqrt(s / (1 - s)) (a = noise_level, default 0.7); at s = 1 that is infinite,
so the first step uses 1 - s_1 (the first noise level below 1) in the denominator. DanceGRPO takes
g = eta constant (default 0.3).

Checked (tests/test_kernels.py): the mean computed through the score form above, in float64,
matches this module's expanded form to 1e-6 relative; on Gaussian data, where v and the score are
exact in closed form, the score identity holds and one step's variance error against the marginal
at s' shrinks as delta^2 (a wrong drift, e.g. g^2/s in place of g^2/(2s), leaves an error of order
delta); at a = 0 (eta = 0) the step is exactly the Euler step of rlft/kernels/ode.py.

Arithmetic is float32 (bf16 overflows in the mean); the action is cast back to the latent's dtype
before its log-prob is taken, so re-scoring a stored action reproduces its log-prob bit for bit.
"""

from __future__ import annotations

import numbers

import torch

from rlft.kernels.base import Transition, check_either, gaussian_log_prob, take_action
from rlft.kernels.flow import Sigma, as_sigma, check_scale, check_step

FLOW_GRPO_NOISE_LEVEL = 0.7
DANCE_GRPO_ETA = 0.3


def flow_grpo_diffusion(sigma: torch.Tensor, sigma_1: torch.Tensor, noise_level: float) -> torch.Tensor:
    """g = a sqrt(s / (1 - s)), with 1 - s_1 in place of 1 - s where s = 1."""
    return noise_level * (sigma / (1 - torch.where(sigma == 1, sigma_1, sigma))).sqrt()


def sde_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: Sigma,
    sigma_next: Sigma,
    diffusion: torch.Tensor,
    has_density: bool,
    noise: torch.Tensor | None,
    prev_sample: torch.Tensor | None,
) -> Transition:
    """One Euler-Maruyama step of the reverse SDE with diffusion coefficient g = `diffusion` (float32,
    broadcastable); `has_density` is False when g is identically 0 (the step is then deterministic)."""
    x = sample.float()
    v = velocity.float()
    s = as_sigma(sigma, x)
    delta = as_sigma(sigma_next, x) - s
    # v + 0 * (...) is v exactly, so at g = 0 this is bit for bit the Euler step x + v * delta.
    mean = x + (v + diffusion**2 / (2 * s) * (x + (1 - s) * v)) * delta
    std = diffusion * (-delta).sqrt()
    action = take_action(mean, std, noise, prev_sample, sample.dtype)
    return Transition(action, gaussian_log_prob(action, mean, std) if has_density else None, mean, std)


def flow_grpo_transition(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: Sigma,
    sigma_next: Sigma,
    *,
    sigma_1: Sigma,
    noise_level: float = FLOW_GRPO_NOISE_LEVEL,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> Transition:
    """Flow-GRPO's SDE step from noise level `sigma` to `sigma_next` given the predicted `velocity`.

    `sigma_1` is the schedule's first noise level below 1, used for g at s = 1. Either `noise`
    (standard normal, drawn by the caller's RandomStream) draws the action, or `prev_sample` is the
    stored action to re-score. At noise_level 0 the step is the Euler step and log_prob is None.
    Noise levels are numbers or (B,) tensors (per-sample steps); numbers are range-checked.
    """
    check_either(noise, prev_sample)
    check_step(sigma, sigma_next)
    check_scale("noise_level", noise_level)
    if isinstance(sigma_1, numbers.Real) and not 0 < sigma_1 < 1:
        raise ValueError(f"sigma_1={sigma_1} must be in (0, 1): the schedule's first noise level below 1")
    s = as_sigma(sigma, sample)
    g = flow_grpo_diffusion(s, as_sigma(sigma_1, sample), noise_level)
    return sde_step(sample, velocity, sigma, sigma_next, g, noise_level != 0, noise, prev_sample)


def dance_grpo_transition(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: Sigma,
    sigma_next: Sigma,
    *,
    eta: float = DANCE_GRPO_ETA,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> Transition:
    """DanceGRPO's step: the same reverse SDE with a constant coefficient g = eta, so
    std = eta sqrt(-delta). Arguments as `flow_grpo_transition`; at eta 0 log_prob is None."""
    check_either(noise, prev_sample)
    check_step(sigma, sigma_next)
    check_scale("eta", eta)
    g = torch.tensor(float(eta), dtype=torch.float32, device=sample.device)
    return sde_step(sample, velocity, sigma, sigma_next, g, eta != 0, noise, prev_sample)

"""What every kernel returns, and the Gaussian log-density they share
(docs/algorithms.md#log-probability-of-an-action)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Floor on a step's standard deviation inside the log-density: a zero-variance step would otherwise
# divide by zero (the JAX DDPO reference clamps the same way).
SIGMA_FLOOR = 1e-6
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Transition:
    """One step x -> x' of a kernel.

    sample: x', in the dtype of the input latent (the action, as it is stored);
    log_prob: log pi(x' | x) per sample, shape (B,): the MEAN of the per-element Gaussian
        log-density over all non-batch elements (DDPO's scale), float32; None for a step that has
        no density (a deterministic step: the ODE step, or a stochastic kernel at noise level 0);
    mean, std: the Gaussian's parameters in float32; std broadcasts against the sample (shape
        (B, 1, ..., 1) or a scalar) and is the std the step draws with.
    """

    sample: torch.Tensor
    log_prob: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor so that it broadcasts over the non-batch dims of `like`."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def check_either(noise: torch.Tensor | None, prev_sample: torch.Tensor | None) -> None:
    if (prev_sample is None) == (noise is None):
        raise ValueError("give either prev_sample (to score an action) or noise (to draw one)")


def take_action(
    mean: torch.Tensor,
    std: torch.Tensor,
    noise: torch.Tensor | None,
    prev_sample: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The action in the latent's dtype: mean + std * noise (sampling) or the given one (scoring).

    The cast happens here, before any log-prob, so that the density belongs to the very tensor
    that is returned and stored: re-scoring it reproduces the log-prob bit for bit.
    """
    if prev_sample is None:
        prev_sample = mean + std * noise.to(device=mean.device, dtype=torch.float32)
    return prev_sample.to(dtype)


def gaussian_log_prob(action: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(action; mean, std^2) per element, averaged over the non-batch dims: shape (B,).

    Float32 throughout; std is floored at SIGMA_FLOOR. The action is data, detached: gradients reach
    the parameters only through the mean.
    """
    std = std.clamp(min=SIGMA_FLOOR)
    log_prob = -((action.detach().float() - mean) ** 2) / (2 * std**2) - std.log() - LOG_SQRT_2PI
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))

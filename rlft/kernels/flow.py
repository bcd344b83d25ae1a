"""Rectified flow as a policy: the parametrisation the flow kernels share
(docs/algorithms.md#rectified-flow-as-a-policy).

x_s = (1 - s) x0 + s eps with s from 1 (noise) to 0 (data); the model predicts the velocity
v ~ eps - x0 = dx_s/ds, so a latent and its velocity give both ends of the line through it:
x0_hat = x - s v and eps_hat = x + (1 - s) v. A step goes from s to s' < s (delta = s' - s < 0).
"""

from __future__ import annotations

import numbers

import torch

Sigma = float | torch.Tensor


def as_sigma(value: Sigma, like: torch.Tensor) -> torch.Tensor:
    """A noise level as float32 on `like`'s device, broadcastable to it: a 0-d tensor for a number or
    a 0-d tensor, (B, 1, ..., 1) for a per-sample (B,) tensor."""
    sigma = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if sigma.ndim == 1:
        sigma = sigma.reshape(sigma.shape[0], *([1] * (like.ndim - 1)))
    elif sigma.ndim != 0:
        raise ValueError(f"a noise level is a number, a 0-d or a (batch,) tensor, not shape {tuple(sigma.shape)}")
    return sigma


def check_step(sigma: Sigma, sigma_next: Sigma) -> None:
    """0 < s <= 1 and 0 <= s' < s, checked when they are numbers. Tensors (a schedule the caller
    built) are trusted: checking them would synchronise with the device at every step."""
    if isinstance(sigma, numbers.Real) and not 0 < sigma <= 1:
        raise ValueError(f"sigma={sigma} is outside (0, 1]: a flow step starts from a noise level in (0, 1]")
    if isinstance(sigma_next, numbers.Real) and not 0 <= sigma_next < 1:
        raise ValueError(f"sigma_next={sigma_next} is outside [0, 1): a flow step ends at a noise level in [0, 1)")
    if isinstance(sigma, numbers.Real) and isinstance(sigma_next, numbers.Real) and not sigma_next < sigma:
        raise ValueError(f"sigma_next={sigma_next} must be below sigma={sigma}: a step goes from noise towards data")


def check_scale(name: str, value: float, upper: float | None = None) -> None:
    """A kernel's noise scale is a number >= 0 (and <= upper where it has one)."""
    if not isinstance(value, numbers.Real) or value < 0 or (upper is not None and value > upper):
        bound = f"in [0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{name}={value!r} must be a number {bound}")


def predicted_clean(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0_hat = x - s v: the data end of the line through x."""
    return x - sigma * velocity


def predicted_noise(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps_hat = x + (1 - s) v: the noise end of the line through x."""
    return x + (1 - sigma) * velocity

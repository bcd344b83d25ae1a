"""The DDIM transition as a Gaussian policy: one denoising step, its log-probability, mean and std
(docs/algorithms.md#ddim-transition-kernel).

diffusers' DDIMScheduler.step samples x_{t-1} but does not return log pi(x_{t-1} | x_t), so the
step is written here. The scheduler only supplies the noise schedule and the sampler's step count;
it is read by attribute (a diffusers DDIMScheduler in practice), so this module needs no diffusers
import and stays pure maths.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from rlft.kernels.base import SIGMA_FLOOR, Transition, check_either, gaussian_log_prob, per_sample, take_action

__all__ = ["SIGMA_FLOOR", "DDIMSchedule", "ddim_step_with_logprob", "ddim_transition"]


class DDIMSchedule(Protocol):
    """What the kernel reads of a diffusers DDIMScheduler."""

    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor | float
    num_inference_steps: int | None
    config: Any  # num_train_timesteps, prediction_type, thresholding, clip_sample, clip_sample_range


def ddim_transition(
    scheduler: DDIMSchedule,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    prev_timestep: torch.Tensor | int | None = None,
) -> Transition:
    """One DDIM step x_t -> x_{t-1}: the action, log pi(x_{t-1} | x_t) per sample (B,), mean, std.

    `prev_timestep` is the step's target timestep (per sample, or one for all; below 0 for the
    chain's end). Given, the step depends only on the two timesteps and the noise schedule, so that a
    stored trajectory is re-scored whatever the scheduler was last set to; without it, it is
    t - num_train_timesteps // num_inference_steps, from `scheduler.set_timesteps`.

    Either `noise` (standard normal, the sample's shape) draws the action x_{t-1} = mean + std * noise
    (sampling), or `prev_sample` is the action to score (training). The kernel draws nothing itself:
    the caller's RandomStream does (rlft/streams.py). The log-prob is computed in float32 on exactly
    the tensor that is returned, after the cast to the sample's dtype, so re-scoring a stored action
    reproduces it bit for bit. `std` is eta * sigma_t, shape (B, 1, ..., 1); the log-density floors
    it at SIGMA_FLOOR (eta = 0 still gets a finite, if meaningless, log-prob, as before).
    """
    check_either(noise, prev_sample)
    batch = sample.shape[0]
    device = sample.device
    t = torch.as_tensor(timestep, device=device).long().reshape(-1).expand(batch)
    if prev_timestep is None:
        if scheduler.num_inference_steps is None:
            raise ValueError("call scheduler.set_timesteps(num_steps) before stepping, or give prev_timestep")
        prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    else:
        prev_t = torch.as_tensor(prev_timestep, device=device).long().reshape(-1).expand(batch)

    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    # Un-clamped rule: a previous timestep below 0 means "the end of the chain".
    alpha_t = per_sample(alphas[t], sample)
    alpha_prev = per_sample(torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final_alpha), sample)

    x_t = sample.float()
    out = model_output.float()
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        eps = out
        x0 = (x_t - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * x_t - (1 - alpha_t).sqrt() * out
        eps = alpha_t.sqrt() * out + (1 - alpha_t).sqrt() * x_t
    elif prediction_type == "sample":
        x0 = out
        eps = (x_t - alpha_t.sqrt() * x0) / (1 - alpha_t).sqrt()
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    if scheduler.config.thresholding:
        raise NotImplementedError("dynamic thresholding is not supported by the log-prob step")
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)

    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.sqrt()
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps

    action = take_action(mean, std, noise, prev_sample, sample.dtype)
    return Transition(action, gaussian_log_prob(action, mean, std), mean, std)


def ddim_step_with_logprob(
    scheduler: DDIMSchedule,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ddim_transition`'s (action, log-prob): one DDIM step x_t -> x_{t-1} and log pi per sample (B,)."""
    step = ddim_transition(scheduler, model_output, timestep, sample, eta, prev_sample=prev_sample, noise=noise)
    return step.sample, step.log_prob

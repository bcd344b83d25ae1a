"""The DDIM transition as a Gaussian policy: one denoising step and its log-probability.

diffusers' DDIMScheduler.step samples x_{t-1} but does not return log pi(x_{t-1} | x_t), and it
clamps nothing we need, so the step is written here (docs/algorithms.md#ddim-transition-kernel). The scheduler still
supplies the noise schedule and the sampler timesteps.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

from rlft.errors import ConfigError

# Floor on the step's standard deviation: eta = 0 or a zero-variance step would otherwise divide
# by zero in the log-prob (the JAX reference clamps the same way).
SIGMA_FLOOR = 1e-6
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def make_scheduler(**overrides) -> DDIMScheduler:
    """The Stable Diffusion 1.x schedule as a DDIM scheduler (scaled-linear betas, leading spacing)."""
    config = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
    }
    config.update(overrides)
    return DDIMScheduler(**config)


def denoising_target(
    scheduler: DDIMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict from x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps: the noise eps,
    or for a v-prediction model (model=toy) v = sqrt(a_t) eps - sqrt(1 - a_t) x_0."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ConfigError(
        f"denoising losses train epsilon- or v-prediction models, not prediction_type={prediction_type!r}"
    )


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor so it broadcasts over the non-batch dims of `like`."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_{t-1} and log pi(x_{t-1} | x_t) per sample, shape (B,).

    Either `noise` (standard normal, the sample's shape) draws the action x_{t-1} = mean + std * noise
    (sampling), or `prev_sample` is the action to score (training). The kernel draws nothing itself:
    the caller's RandomStream does (rlft/streams.py). The log-prob is computed in float32 on exactly
    the tensor that is returned, after the cast to the sample's dtype, so re-scoring a stored action
    reproduces it bit for bit.
    """
    if (prev_sample is None) == (noise is None):
        raise ValueError("give either prev_sample (to score an action) or noise (to draw one)")
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")

    batch = sample.shape[0]
    device = sample.device
    t = torch.as_tensor(timestep, device=device).long().reshape(-1).expand(batch)
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps

    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    # Un-clamped rule: a previous timestep below 0 means "the end of the chain".
    alpha_t = _per_sample(alphas[t], sample)
    alpha_prev = _per_sample(torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final_alpha), sample)

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

    if prev_sample is None:
        prev_sample = mean + std * noise.to(device=device, dtype=torch.float32)
    prev_sample = prev_sample.to(sample.dtype)

    std = std.clamp(min=SIGMA_FLOOR)
    log_prob = -((prev_sample.detach().float() - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))

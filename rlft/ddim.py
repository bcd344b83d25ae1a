"""DDIM for Stable Diffusion 1.x: the noise schedule, the denoising target, and the transition
kernel, whose maths lives in rlft/kernels/ddim.py (docs/algorithms.md#ddim-transition-kernel) and is
re-exported here so that `from rlft.ddim import ddim_step_with_logprob` keeps working.

What stays here needs diffusers or rlft's errors, which the pure kernels do not import.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from rlft.errors import ConfigError
from rlft.kernels.base import SIGMA_FLOOR, Transition
from rlft.kernels.ddim import ddim_step_with_logprob, ddim_transition

__all__ = [
    "SIGMA_FLOOR",
    "Transition",
    "ddim_step_with_logprob",
    "ddim_transition",
    "denoising_target",
    "make_scheduler",
]


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

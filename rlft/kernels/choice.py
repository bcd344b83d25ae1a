"""The kernels a run chooses in config (`sample.kernel`, conf/kernel/): each binds a kernel's own
parameters (DDIM's eta, the SDE's noise level) to its step function.

A kernel belongs to one parametrisation: `"ddim"` kernels step a noise prediction along a DDPM
schedule of integer timesteps, `"flow"` kernels step a velocity along a schedule of noise levels
s in [0, 1]. A model family's policy accepts the kernels of its parametrisation and refuses the
others (rlft/families/base.py). `has_density` says whether the step is a Gaussian with a log-prob,
which the policy-gradient algorithms need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from rlft.kernels.base import Transition
from rlft.kernels.cps import CPS_NOISE_LEVEL, cps_transition
from rlft.kernels.ddim import DDIMSchedule, ddim_transition
from rlft.kernels.flow_sde import DANCE_GRPO_ETA, FLOW_GRPO_NOISE_LEVEL, dance_grpo_transition, flow_grpo_transition
from rlft.kernels.ode import euler_transition


def _check(name: str, value: float, upper: float | None = None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (upper and value > upper):
        bound = f"in [0, {upper}]" if upper else ">= 0"
        raise ValueError(f"sample.kernel.{name}={value!r} must be a number {bound}")


@dataclass(frozen=True)
class DDIMKernel:
    """DDIM's step with stochasticity eta (1: DDPM's posterior variance; 0: deterministic DDIM)."""

    eta: float = 1.0
    parametrisation: ClassVar[str] = "ddim"

    def __post_init__(self):
        _check("eta", self.eta)

    @property
    def has_density(self) -> bool:
        return self.eta > 0

    def __call__(
        self,
        scheduler: DDIMSchedule,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        prev_timestep: torch.Tensor,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
        prev_sample: torch.Tensor | None = None,
    ) -> Transition:
        return ddim_transition(
            scheduler, model_output, timestep, sample, self.eta, prev_sample, noise, prev_timestep=prev_timestep
        )


@dataclass(frozen=True)
class FlowKernel:
    """A step of a flow's schedule from sigma to sigma_next; `sigmas` is the whole schedule
    (T + 1 levels, or (B, T + 1) per sample), for kernels whose coefficients read more of it."""

    parametrisation: ClassVar[str] = "flow"
    has_density: ClassVar[bool] = True

    def __call__(
        self,
        sample: torch.Tensor,
        velocity: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        sigmas: torch.Tensor,
        noise: torch.Tensor | None = None,
        prev_sample: torch.Tensor | None = None,
    ) -> Transition:
        raise NotImplementedError


@dataclass(frozen=True)
class FlowGRPOKernel(FlowKernel):
    """Flow-GRPO's SDE, g = noise_level sqrt(s / (1 - s))."""

    noise_level: float = FLOW_GRPO_NOISE_LEVEL

    def __post_init__(self):
        _check("noise_level", self.noise_level)

    @property
    def has_density(self) -> bool:
        return self.noise_level > 0

    def __call__(self, sample, velocity, sigma, sigma_next, sigmas, noise=None, prev_sample=None) -> Transition:
        sigma_1 = sigmas[..., 1]  # the first level below 1 (per sample for a (B, T + 1) schedule)
        return flow_grpo_transition(
            sample, velocity, sigma, sigma_next, sigma_1=sigma_1, noise_level=self.noise_level, noise=noise,
            prev_sample=prev_sample,
        )  # fmt: skip


@dataclass(frozen=True)
class DanceGRPOKernel(FlowKernel):
    """DanceGRPO's SDE, constant g = eta."""

    eta: float = DANCE_GRPO_ETA

    def __post_init__(self):
        _check("eta", self.eta)

    @property
    def has_density(self) -> bool:
        return self.eta > 0

    def __call__(self, sample, velocity, sigma, sigma_next, sigmas, noise=None, prev_sample=None) -> Transition:
        return dance_grpo_transition(
            sample, velocity, sigma, sigma_next, eta=self.eta, noise=noise, prev_sample=prev_sample
        )


@dataclass(frozen=True)
class CPSKernel(FlowKernel):
    """Coefficients-preserving sampling, std = s' sin(noise_level pi / 2). Its step into s' = 0 is
    deterministic: keep it out of training (train.timestep_window)."""

    noise_level: float = CPS_NOISE_LEVEL

    def __post_init__(self):
        _check("noise_level", self.noise_level, upper=1.0)

    @property
    def has_density(self) -> bool:
        return self.noise_level > 0

    def __call__(self, sample, velocity, sigma, sigma_next, sigmas, noise=None, prev_sample=None) -> Transition:
        return cps_transition(
            sample, velocity, sigma, sigma_next, noise_level=self.noise_level, noise=noise, prev_sample=prev_sample
        )


@dataclass(frozen=True)
class EulerKernel(FlowKernel):
    """The deterministic ODE step (the pipelines' sampler): no density, so only RWR trains on it."""

    has_density: ClassVar[bool] = False

    def __call__(self, sample, velocity, sigma, sigma_next, sigmas, noise=None, prev_sample=None) -> Transition:
        step = euler_transition(sample, velocity, sigma, sigma_next)
        if prev_sample is not None:  # nothing to score: the stored action is the step's only outcome
            return Transition(prev_sample, None, step.mean, step.std)
        return step


Kernel = DDIMKernel | FlowKernel

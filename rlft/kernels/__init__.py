"""Transition kernels as pure maths: one denoising step, its density, mean and std.

Each module imports torch and math only (nothing of the training loop), takes the random numbers
it needs from the caller (`noise=`, drawn through rlft/streams.py) or the action to re-score
(`prev_sample=`), and returns a `Transition`. The formulas are in docs/algorithms.md, one section
per kernel.
"""

from rlft.kernels.base import Transition, gaussian_log_prob
from rlft.kernels.choice import CPSKernel, DanceGRPOKernel, DDIMKernel, EulerKernel, FlowGRPOKernel, FlowKernel, Kernel
from rlft.kernels.cps import cps_transition
from rlft.kernels.ddim import ddim_step_with_logprob, ddim_transition
from rlft.kernels.flow_sde import dance_grpo_transition, flow_grpo_transition
from rlft.kernels.ode import euler_transition

__all__ = [
    "CPSKernel",
    "DDIMKernel",
    "DanceGRPOKernel",
    "EulerKernel",
    "FlowGRPOKernel",
    "FlowKernel",
    "Kernel",
    "Transition",
    "cps_transition",
    "dance_grpo_transition",
    "ddim_step_with_logprob",
    "ddim_transition",
    "euler_transition",
    "flow_grpo_transition",
    "gaussian_log_prob",
]

"""What the RL module asks of an algorithm, and what it offers one to train with."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import torch
from omegaconf import DictConfig
from torch import nn

from rlft.errors import ConfigError
from rlft.families.base import DiffusionPolicy
from rlft.kernels.choice import Kernel
from rlft.streams import RandomStream
from rlft.trajectories import Trajectories


class Learner(Protocol):
    """The training side of the RL module: the policy, the config and the optimizers."""

    policy: DiffusionPolicy
    cfg: DictConfig
    current_epoch: int

    def backpropagate(self, loss: torch.Tensor, synchronize: bool = True) -> None:
        """Backward of one micro-step; `synchronize=False` when no optimizer step follows it (DDP
        then skips the gradient all-reduce). Every rank must run the same micro-steps."""

    def optimizer_step(self) -> None:
        """Clip each optimizer's gradients to train.max_grad_norm, step them all, clear them."""

    def progress(self, total: int): ...

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-rank (n, ...) tensor over ranks, in rank order."""


@dataclass
class EpochSamples:
    """What advantages are computed from: the epoch's samples of every rank, in rank order."""

    rewards: torch.Tensor  # (N,)
    prompts: list[str]
    log_probs: torch.Tensor | None = None  # (N, T) behaviour log-probs
    reference_log_probs: torch.Tensor | None = None  # (N, T), when the algorithm asked for them
    values: torch.Tensor | None = None  # (N, T) critic values at sampling time, for critic algorithms


@dataclass
class Targets:
    """An algorithm's training targets for the epoch, over every rank's samples (rows as in EpochSamples)."""

    advantages: torch.Tensor  # (N,) per sample, or (N, T) per step; weights for RWR
    returns: torch.Tensor | None = None  # (N, T) critic targets
    metrics: dict[str, float] = field(default_factory=dict)


class Algorithm:
    """An advantage (or weighting) rule and the epoch's optimization, with checkpointable state."""

    #: whether sampling must also score each action under the frozen reference policy (KL)
    needs_reference: bool = False
    #: whether training evaluates the frozen reference policy itself (GRPO's KL on the kernel's means);
    #: the policy then keeps the base model, but sampling scores nothing under it
    trains_against_reference: bool = False
    #: the metrics of `optimize` that the epoch's console line shows, when the epoch measured them
    console_metrics: tuple[str, ...] = ("loss",)
    #: whether training uses the kernel's log-probs (policy gradients): a deterministic kernel has none
    needs_log_probs: bool = True

    def check_kernel(self, kernel: Kernel) -> None:
        """Refuse, in one line, a kernel whose steps this algorithm cannot train on."""
        if self.needs_log_probs and not kernel.has_density:
            raise ConfigError(
                f"sample.kernel={kernel}: {type(self).__name__} trains on the log-probs of stochastic steps "
                "and this kernel's are deterministic; pick a stochastic kernel (a noise level or eta > 0) "
                "or algorithm=rwr, which trains on the family's denoising loss"
            )

    def advantages(self, samples: EpochSamples) -> Targets:
        raise NotImplementedError

    def optimize(self, learner: Learner, trajectories: Trajectories, stream: RandomStream) -> dict[str, float]:
        """Train on this process's trajectories (advantages already set); returns mean metrics."""
        raise NotImplementedError

    # -- optional parts, for algorithms with models of their own (a critic) --------------------
    def modules(self) -> dict[str, nn.Module]:
        """Networks the RL module must own (device placement, DDP, checkpoints)."""
        return {}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers besides the policy's."""
        return []

    def state_encoder(self):
        """None, or a callable images (B, 3, H, W) in [0, 1] -> features (B, D) that sampling applies
        to the decoded latent of every state."""
        return

    def state_values(self, trajectories: Trajectories) -> torch.Tensor | None:
        """(n, T) values of the sampled states, or None."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# The policy-ratio diagnostics of a PPO-style loss: on a micro-step before the epoch's first
# optimizer step the policy is still the one that sampled, so the ratio is 1 and these read 1 / 0
# by construction (not as a measurement). They are averaged over the later micro-steps only.
AFTER_UPDATE_METRICS = frozenset({"ratio", "approx_kl", "clipfrac", "pg_clipfrac"})


class MetricMeans:
    """Collects per-micro-step metrics and averages them at the end of the epoch, with the epoch's
    number of optimizer steps (`optimizer_steps`; an algorithm calls `stepped()` after each).

    AFTER_UPDATE_METRICS count only from micro-steps after the epoch's first optimizer step, and
    are NaN for an epoch that has none (e.g. one optimizer step per epoch): unmeasured, not 0."""

    def __init__(self):
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.unmeasured: set[str] = set()
        self.steps = 0

    def add(self, **metrics: torch.Tensor) -> None:
        for key, value in metrics.items():
            if key in AFTER_UPDATE_METRICS and self.steps == 0:
                self.unmeasured.add(key)
                continue
            self.values[key].append(torch.as_tensor(value).detach())

    def stepped(self) -> None:
        """The learner's optimizer just stepped."""
        self.steps += 1

    def means(self) -> dict[str, float]:
        means = {key: torch.stack(values).float().mean().item() for key, values in self.values.items()}
        return {**dict.fromkeys(self.unmeasured, math.nan), **means, "optimizer_steps": float(self.steps)}

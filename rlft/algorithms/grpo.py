"""GRPO (docs/algorithms.md#grpo): group-relative advantages over the k images of each prompt in the
epoch, DDPO's clipped loop on the samples that carry a signal, and an optional closed-form KL to the
base model on the kernel's means; on any family's stochastic kernel (Flow-GRPO's SDE on SD3, DDIM
on SD 1.x as DanceGRPO runs it)."""

from __future__ import annotations

import numpy as np
import torch

from rlft.algorithms.base import Algorithm, EpochSamples, Learner, MetricMeans, Targets
from rlft.algorithms.ddpo import clipped_epochs, ppo_clipped_loss
from rlft.errors import ConfigError
from rlft.kernels.base import SIGMA_FLOOR
from rlft.kernels.choice import Kernel
from rlft.streams import RandomStream
from rlft.trajectories import TimestepBatch, Trajectories, rescore, transition_of

# Added to the group's std (Flow-GRPO's constant): a group of nearly equal rewards gets large, not
# infinite, advantages (and a group of exactly equal ones gets 0: see group_advantages).
STD_EPS = 1e-4


def group_advantages(
    prompts: list[str], rewards: np.ndarray, global_std: bool = False, adv_clip_max: float = 5.0
) -> tuple[np.ndarray, int, int]:
    """A_i = (r_i - mean_g) / (std + 1e-4) over each prompt's group g of this epoch alone, std the
    group's (population) std or, with `global_std`, that of all the epoch's rewards; clipped to
    +-adv_clip_max. A group whose rewards are all equal gets exactly 0 (its float mean may differ
    from its values by a rounding error). Returns (advantages in float64, groups, zero-std groups)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    prompts_array = np.asarray(prompts, dtype=object)
    advantages = np.zeros_like(rewards)
    everything_std = rewards.std()
    groups = zero = 0
    for prompt in dict.fromkeys(prompts):  # unique, in first-seen order
        mask = prompts_array == prompt
        group = rewards[mask]
        groups += 1
        if group.min() == group.max():
            zero += 1
            continue
        std = everything_std if global_std else group.std()
        advantages[mask] = (group - group.mean()) / (std + STD_EPS)
    return np.clip(advantages, -adv_clip_max, adv_clip_max), groups, zero


def gaussian_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(reference_mean, std^2)) per element, averaged over the non-batch dims
    (the log-prob's convention): (B,). Two Gaussians of one std differ only in the mean, so the KL is
    ||mean - reference_mean||^2 / (2 std^2); std is floored as in the log-density."""
    std = std.clamp(min=SIGMA_FLOOR)
    kl = (mean.float() - reference_mean.float()) ** 2 / (2 * std.float() ** 2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def training_rows(advantages: torch.Tensor, batch_size: int, most: int, stream: RandomStream) -> torch.Tensor:
    """The rows to train on: those whose advantage is not 0, in order, then as many of the others,
    drawn at random, as make `most` (the largest kept count of any rank) whole minibatches."""
    kept = (advantages != 0).nonzero().squeeze(1)
    dropped = (advantages == 0).nonzero().squeeze(1)
    size = batch_size * -(-most // batch_size)
    top_up = dropped[stream.permutation(len(dropped), dropped.device)[: size - len(kept)]]
    return torch.cat([kept, top_up])


def flow_step_length(step: TimestepBatch) -> torch.Tensor:
    """-delta = s_j - s_{j+1} per sample (B,): the length of each row's flow step."""
    index = step.step_index.reshape(-1, 1)
    return step.schedule.gather(1, index).squeeze(1) - step.schedule.gather(1, index + 1).squeeze(1)


KL_SCALINGS = ("exact", "flow_grpo")


class GRPO(Algorithm):
    """Group-relative policy optimization as Flow-GRPO and DanceGRPO run it.

    `kl_scaling`: "exact" (the default) adds kl_beta x the true KL between the two step
    distributions, which means the same on every kernel and schedule; "flow_grpo" multiplies it by
    the step length -delta, which is what Flow-GRPO's code computes (||mu - mu_ref||^2 / (2 g^2)
    with g the diffusion coefficient, not the step's std g sqrt(-delta)): its beta values (0.01
    for PickScore, 0.04 for GenEval and OCR) were tuned against that, so the presets that reproduce
    its runs use it. Flow kernels only (a DDIM step has no step length in s)."""

    console_metrics = ("zero_std_ratio", "approx_kl", "clipfrac", "kl")

    def __init__(
        self,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        global_std: bool = False,
        kl_beta: float = 0.0,
        kl_scaling: str = "exact",
    ):
        if kl_scaling not in KL_SCALINGS:
            raise ConfigError(
                f"algorithm.kl_scaling={kl_scaling!r} must be one of {', '.join(KL_SCALINGS)}", "kl_scaling"
            )
        self.clip_range = clip_range
        self.adv_clip_max = adv_clip_max
        self.global_std = global_std
        self.kl_beta = kl_beta
        self.kl_scaling = kl_scaling
        self.trains_against_reference = kl_beta > 0

    def check_kernel(self, kernel: Kernel) -> None:
        super().check_kernel(kernel)
        if self.kl_scaling == "flow_grpo" and kernel.parametrisation != "flow":
            raise ConfigError(
                f"algorithm.kl_scaling=flow_grpo: Flow-GRPO's KL scaling is defined for flow kernels, and "
                f"sample.kernel={kernel} is a {kernel.parametrisation} kernel; use algorithm.kl_scaling=exact"
            )

    def advantages(self, samples: EpochSamples) -> Targets:
        values = samples.rewards.cpu().double().numpy()
        advantages, groups, zero = group_advantages(samples.prompts, values, self.global_std, self.adv_clip_max)
        advantages = torch.as_tensor(advantages, dtype=torch.float32)
        metrics = {
            "zero_std_ratio": zero / groups,
            "kept_fraction": (advantages != 0).double().mean().item(),
        }
        return Targets(advantages, metrics=metrics)

    def step_loss(
        self, learner: Learner, step: TimestepBatch, guidance_scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The clipped surrogate on the stored actions, plus kl_beta x the step's Gaussian KL to the
        base model's kernel on the same stored state."""
        if not self.kl_beta:
            log_prob = rescore(learner.policy, step, guidance_scale)
            return ppo_clipped_loss(log_prob, step.log_probs, step.advantages, self.clip_range)
        with torch.no_grad():
            reference = transition_of(learner.policy, step, guidance_scale, reference=True)
        current = transition_of(learner.policy, step, guidance_scale)
        loss, metrics = ppo_clipped_loss(current.log_prob, step.log_probs, step.advantages, self.clip_range)
        per_sample = gaussian_kl(current.mean, reference.mean, current.std)
        if self.kl_scaling == "flow_grpo":
            per_sample = per_sample * flow_step_length(step).float()
        kl = per_sample.mean()
        return loss + self.kl_beta * kl, {**metrics, "policy_loss": loss.detach(), "kl": kl.detach()}

    def optimize(self, learner: Learner, trajectories: Trajectories, stream: RandomStream) -> dict[str, float]:
        """DDPO's loop over the samples whose advantage is not 0. Every rank must run the same
        micro-steps (DDP), so each trains on as many samples as the rank that kept the most, rounded
        up to whole minibatches, topping its kept ones up with dropped ones drawn at random (their
        advantage 0 adds no policy gradient; Flow-GRPO tops up the same way)."""
        t = learner.cfg.train
        advantages = trajectories.advantages
        kept = int((advantages != 0).sum())
        most = int(learner.gather(torch.tensor([kept], device=advantages.device)).max())
        if most == 0:  # every group scored its images alike: nothing to learn from this epoch
            return MetricMeans().means()
        rows = training_rows(advantages, t.batch_size, most, stream)
        accumulation = min(t.gradient_accumulation_steps, len(rows) // t.batch_size)
        return clipped_epochs(learner, trajectories.select(rows), stream, accumulation, self.step_loss)

    def state_dict(self) -> dict:
        return {}  # the statistics are the epoch's own: nothing carries over to the next

    def load_state_dict(self, state: dict) -> None:
        pass

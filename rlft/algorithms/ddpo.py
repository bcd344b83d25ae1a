"""DDPO (docs/algorithms.md#ddpo): the PPO-clipped importance-sampling estimator, and its
score-function special case."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlft.algorithms.base import Algorithm, EpochSamples, Learner, MetricMeans, Targets
from rlft.algorithms.kl import KLRegularization
from rlft.algorithms.stat_tracker import PerPromptStatTracker
from rlft.errors import ConfigError
from rlft.streams import RandomStream
from rlft.trajectories import TimestepBatch, Trajectories, rescore, trained_steps, training_batches


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, ...]:
    """mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))), with the terms its metrics use:
    (loss, log_ratio, ratio, unclipped, clipped)."""
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), log_ratio, ratio, unclipped, clipped


def ppo_clipped_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate with DDPO's diagnostics (approx_kl = 1/2 mean(log_ratio^2))."""
    loss, log_ratio, ratio, _, _ = clipped_surrogate(log_prob, old_log_prob, advantages, clip_range)
    with torch.no_grad():
        metrics = {
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio": ratio.mean(),
        }
    return loss, metrics


def score_function_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE: mean(-A * log pi). Its gradient is the clipped loss's at ratio 1."""
    with torch.no_grad():
        log_ratio = log_prob - old_log_prob
        metrics = {"approx_kl": 0.5 * (log_ratio**2).mean(), "ratio": torch.exp(log_ratio).mean()}
    return -(advantages * log_prob).mean(), metrics


StepLoss = Callable[[Learner, TimestepBatch, float], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def clipped_epochs(
    learner: Learner, trajectories: Trajectories, stream: RandomStream, accumulation: int, step_loss: StepLoss
) -> dict[str, float]:
    """DDPO's optimization loop (docs/algorithms.md#ddpo-update-schedule), shared with GRPO: inner
    epochs; for each shuffled minibatch, for each of its K timestep columns: `step_loss`, backward;
    an optimizer step after every `accumulation` minibatches, and after the last one (a shorter
    window only when `accumulation` does not divide the minibatches, which GRPO's filtered epochs
    allow; its loss is then averaged over that window). A last minibatch may be short."""
    t, s = learner.cfg.train, learner.cfg.sample
    steps, num_timesteps = trained_steps(trajectories.num_steps, t.timestep_fraction, t.timestep_window)
    num_minibatches = -(-len(trajectories) // t.batch_size)
    guidance = s.guidance_scale if t.cfg else 1.0
    metrics = MetricMeans()
    bar = learner.progress(t.num_inner_epochs * num_minibatches * num_timesteps)
    for _ in range(t.num_inner_epochs):
        for index, batch in enumerate(training_batches(trajectories, t.batch_size, num_timesteps, stream, steps)):
            window = min(accumulation, num_minibatches - index // accumulation * accumulation)
            steps_after = (index + 1) % accumulation == 0 or index == num_minibatches - 1
            for j in range(num_timesteps):
                loss, info = step_loss(learner, batch.column(j), guidance)
                # The update direction is the mean over samples x timesteps of an accumulation window.
                learner.backpropagate(
                    loss / (window * num_timesteps), synchronize=steps_after and j == num_timesteps - 1
                )
                metrics.add(loss=loss, **info)
                bar.update()
            if steps_after:
                learner.optimizer_step()
                metrics.stepped()
    bar.close()
    return metrics.means()


class DDPO(Algorithm):
    """DDPO_IS: several clipped updates per round of sampling (the reference code's algorithm)."""

    console_metrics = ("approx_kl", "clipfrac")

    def __init__(
        self,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        per_prompt_stat_tracking: bool = True,
        stat_buffer_size: int = 16,
        stat_min_count: int = 16,
        kl: KLRegularization | None = None,
    ):
        self.clip_range = clip_range
        self.adv_clip_max = adv_clip_max
        self.tracker = PerPromptStatTracker(stat_buffer_size, stat_min_count) if per_prompt_stat_tracking else None
        self.kl = kl if kl is not None and kl.enabled else None
        self.needs_reference = self.kl is not None

    def advantages(self, samples: EpochSamples) -> Targets:
        rewards, metrics = samples.rewards.cpu().double(), {}
        if self.kl is not None:
            # One advantage per sample: the penalty is the sum of the per-step terms.
            terms, metrics = self.kl.reward_terms(samples.log_probs.cpu(), samples.reference_log_probs.cpu())
            metrics["reward_with_kl_mean"] = (rewards + terms.sum(dim=1)).mean().item()
            rewards = rewards + terms.sum(dim=1)
        values = rewards.numpy()
        if self.tracker is not None:
            advantages = self.tracker.update(samples.prompts, values)
        else:
            advantages = (values - values.mean()) / (values.std() + 1e-8)
        advantages = torch.as_tensor(advantages, dtype=torch.float32).clamp(-self.adv_clip_max, self.adv_clip_max)
        return Targets(advantages, metrics=metrics)

    def loss(self, log_prob, old_log_prob, advantages):
        return ppo_clipped_loss(log_prob, old_log_prob, advantages, self.clip_range)

    def accumulation_steps(self, learner: Learner, num_minibatches: int) -> int:
        """Minibatches per optimizer step."""
        return learner.cfg.train.gradient_accumulation_steps

    def step_loss(
        self, learner: Learner, step: TimestepBatch, guidance_scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-step's loss: the current policy re-scores the stored actions of a timestep column."""
        return self.loss(rescore(learner.policy, step, guidance_scale), step.log_probs, step.advantages)

    def optimize(self, learner: Learner, trajectories: Trajectories, stream: RandomStream) -> dict[str, float]:
        num_minibatches = len(trajectories) // learner.cfg.train.batch_size
        accumulation = self.accumulation_steps(learner, num_minibatches)
        return clipped_epochs(learner, trajectories, stream, accumulation, self.step_loss)

    def state_dict(self) -> dict:
        return {
            "tracker": self.tracker.state_dict() if self.tracker else None,
            "kl": self.kl.state_dict() if self.kl else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.tracker is not None and state.get("tracker") is not None:
            self.tracker.load_state_dict(state["tracker"])
        if self.kl is not None and state.get("kl") is not None:
            self.kl.load_state_dict(state["kl"])


class DDPOScoreFunction(DDPO):
    """DDPO_SF: the score-function estimator, fully on-policy: one optimizer step per epoch over
    every (sample, timestep) of the epoch, whatever train.gradient_accumulation_steps says."""

    console_metrics = ()  # one step per epoch: the ratio diagnostics are never measured

    def loss(self, log_prob, old_log_prob, advantages):
        return score_function_loss(log_prob, old_log_prob, advantages)

    def accumulation_steps(self, learner: Learner, num_minibatches: int) -> int:
        if learner.cfg.train.num_inner_epochs != 1:
            raise ConfigError("algorithm=ddpo_sf takes one step per round of sampling: set train.num_inner_epochs=1")
        return num_minibatches

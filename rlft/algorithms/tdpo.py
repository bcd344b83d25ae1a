"""TDPO and TDPO-R (docs/algorithms.md#tdpo-and-tdpo-r): clipped policy gradient with per-timestep advantages from a
temporal critic on image embeddings of the decoded intermediate states; TDPO-R also resets the
critic's neurons periodically (primacy-bias mitigation)."""

from __future__ import annotations

import numpy as np
import torch

from rlft.algorithms.base import Algorithm, EpochSamples, Learner, MetricMeans, Targets
from rlft.algorithms.critic import Critic
from rlft.algorithms.ddpo import clipped_surrogate
from rlft.algorithms.kl import KLRegularization
from rlft.algorithms.recycler import hidden_activations, neuron_scores, reset_neurons
from rlft.algorithms.running_moments import RunningMoments
from rlft.algorithms.stat_tracker import PerPromptStatTracker
from rlft.embedders import ImageEmbedder
from rlft.errors import ConfigError
from rlft.streams import RandomStream
from rlft.trajectories import Trajectories, rescore, trained_steps, training_batches


def discounted_returns(final_rewards: torch.Tensor, num_steps: int, gamma: float, step_terms=None) -> torch.Tensor:
    """R (N, T): the reward arrives at the last step, optional per-step terms (KL) at every step,
    then R[:, k] += gamma * R[:, k + 1] backwards."""
    returns = torch.zeros(len(final_rewards), num_steps, dtype=torch.float64)
    returns[:, -1] += final_rewards.double()
    if step_terms is not None:
        returns += step_terms.double()
    for k in range(num_steps - 2, -1, -1):
        returns[:, k] += gamma * returns[:, k + 1]
    return returns


def temporal_advantages(returns: torch.Tensor, values: torch.Tensor, normalize: bool) -> torch.Tensor:
    """A = R - V; normalized over all N x T entries (unbiased std, as torch's .std())."""
    advantages = returns.double() - values.double()
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return advantages


def clipped_policy_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPO's clipped surrogate with TDPO's diagnostics: the k3 KL estimate and the fraction of
    samples where the clipped term is the larger loss."""
    loss, log_ratio, ratio, unclipped, clipped = clipped_surrogate(log_prob, old_log_prob, advantages, clip_range)
    with torch.no_grad():
        metrics = {
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "pg_clipfrac": (clipped > unclipped).float().mean(),
            "ratio": ratio.mean(),
        }
    return loss, metrics


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """1/2 mean(max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2)); c = 0 is unclipped.
    Returns the loss and the fraction of entries where the clipped error is the larger."""
    unclipped = (values - returns) ** 2
    if clip_range <= 0:
        return 0.5 * unclipped.mean(), torch.zeros((), device=values.device)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped).mean(), (clipped > unclipped).float().mean().detach()


class TDPO(Algorithm):
    console_metrics = ("approx_kl", "pg_clipfrac", "cf_loss")

    def __init__(
        self,
        embedder: ImageEmbedder,
        clip_range: float = 1e-4,
        gamma: float = 1.0,
        reward_norm: bool = True,
        reward_scaling: bool = False,
        per_prompt_running_moments: bool = True,
        stat_buffer_size: int = 16,
        stat_min_count: int = 16,
        clip_range_reward: float = 0.0,
        temporal_reward_norm: bool = True,
        clip_range_critic: float = 0.2,
        cf_coef: float = 1.0,
        critic_hidden_sizes: tuple[int, ...] = (1024, 128, 64, 16),
        critic_dropout: tuple[float, ...] = (0.2, 0.2, 0.1, 0.0),
        critic_learning_rate: float = 1e-4,
        critic_adam_beta1: float = 0.9,
        critic_adam_beta2: float = 0.999,
        critic_adam_weight_decay: float = 1e-4,
        critic_adam_epsilon: float = 1e-8,
        neuron_reset: bool = False,
        neuron_reset_freq: int = 10,
        dormant_threshold: float = 0.0,
        reset_which: str = "active",
        kl: KLRegularization | None = None,
    ):
        if reward_norm and reward_scaling:
            raise ConfigError(
                "algorithm.reward_norm and algorithm.reward_scaling are both true: choose one (set the other false)"
            )
        if reset_which not in ("active", "dormant"):
            raise ConfigError(f"algorithm.reset_which={reset_which!r} must be 'active' (TDPO-R) or 'dormant' (ReDo)")
        if neuron_reset_freq < 1:
            raise ConfigError(f"algorithm.neuron_reset_freq={neuron_reset_freq} must be at least 1")
        self.embedder = embedder
        self.critic = Critic(embedder.dim, tuple(critic_hidden_sizes), tuple(critic_dropout))
        self.critic.eval()
        self.clip_range = clip_range
        self.gamma = gamma
        self.moments_mode = "norm" if reward_norm else "scaling" if reward_scaling else None
        self.per_prompt_moments = (
            PerPromptStatTracker(stat_buffer_size, stat_min_count, self.moments_mode or "norm")
            if per_prompt_running_moments
            else None
        )
        self.global_moments = RunningMoments()
        self.clip_range_reward = clip_range_reward
        self.temporal_reward_norm = temporal_reward_norm
        self.clip_range_critic = clip_range_critic
        self.cf_coef = cf_coef
        self.critic_optimizer_settings = {
            "lr": critic_learning_rate,
            "betas": (critic_adam_beta1, critic_adam_beta2),
            "weight_decay": critic_adam_weight_decay,
            "eps": critic_adam_epsilon,
        }
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.neuron_reset = neuron_reset
        self.neuron_reset_freq = neuron_reset_freq
        self.dormant_threshold = dormant_threshold
        self.reset_which = reset_which
        self.previous_dormant: list[list[bool]] | None = None
        self.kl = kl if kl is not None and kl.enabled else None
        self.needs_reference = self.kl is not None

    # -- parts the RL module owns ----------------------------------------------------------------
    def modules(self):
        return {"critic": self.critic, "embedder": self.embedder}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), **self.critic_optimizer_settings)
        return [self.critic_optimizer]

    def state_encoder(self):
        return self.embedder

    @torch.no_grad()
    def state_values(self, trajectories: Trajectories) -> torch.Tensor:
        self.critic.eval()
        with torch.autocast(trajectories.state_features.device.type, enabled=False):
            return self.critic(trajectories.state_features)

    # -- advantages -----------------------------------------------------------------------------
    def preprocess_rewards(self, rewards: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        values = rewards.cpu().double().numpy()
        if self.moments_mode is not None:
            if self.per_prompt_moments is not None:
                values = self.per_prompt_moments.update(prompts, values)
            else:
                values = self.global_moments.normalize(values, self.moments_mode)
        if self.clip_range_reward > 0:
            values = np.clip(values, -self.clip_range_reward, self.clip_range_reward)
        return torch.as_tensor(values, dtype=torch.float64)

    def advantages(self, samples: EpochSamples) -> Targets:
        rewards = self.preprocess_rewards(samples.rewards, samples.prompts)
        terms, metrics = None, {}
        if self.kl is not None:
            terms, metrics = self.kl.reward_terms(samples.log_probs.cpu(), samples.reference_log_probs.cpu())
        values = samples.values.detach().cpu().double()
        returns = discounted_returns(rewards, values.shape[1], self.gamma, terms)
        advantages = temporal_advantages(returns, values, self.temporal_reward_norm)
        metrics.update(value_mean=values.mean().item(), return_mean=returns.mean().item())
        return Targets(advantages.float(), returns=returns.float(), metrics=metrics)

    # -- optimization ---------------------------------------------------------------------------
    def optimize(self, learner: Learner, trajectories: Trajectories, stream: RandomStream) -> dict[str, float]:
        """Timestep-outer, minibatch-inner (docs/algorithms.md#tdpo-update-schedule): for each column j,
        every minibatch takes one micro-step of policy + critic loss; both optimizers step every GA micro-steps."""
        t, s = learner.cfg.train, learner.cfg.sample
        steps, num_timesteps = trained_steps(trajectories.num_steps, t.timestep_fraction, t.timestep_window)
        accumulation = t.gradient_accumulation_steps
        guidance = s.guidance_scale if t.cfg else 1.0
        metrics = MetricMeans()
        bar = learner.progress(t.num_inner_epochs * (len(trajectories) // t.batch_size) * num_timesteps)
        self.critic.train()  # dropout on while the critic learns
        for _ in range(t.num_inner_epochs):
            batches = training_batches(trajectories, t.batch_size, num_timesteps, stream, steps)
            micro_steps = 0
            for j in range(num_timesteps):
                for batch in batches:
                    step = batch.column(j)
                    log_prob = rescore(learner.policy, step, guidance)
                    pg_loss, info = clipped_policy_loss(log_prob, step.log_probs, step.advantages, self.clip_range)
                    with torch.autocast(log_prob.device.type, enabled=False):  # the critic trains in fp32
                        values = self.critic(step.state_features)
                    cf_loss, cf_clipfrac = clipped_value_loss(values, step.values, step.returns, self.clip_range_critic)
                    loss = pg_loss + self.cf_coef * cf_loss
                    learner.backpropagate(loss / accumulation, synchronize=(micro_steps + 1) % accumulation == 0)
                    metrics.add(loss=loss, pg_loss=pg_loss, cf_loss=cf_loss, cf_clipfrac=cf_clipfrac, **info)
                    bar.update()
                    micro_steps += 1
                    if micro_steps % accumulation == 0:
                        learner.optimizer_step()
                        metrics.stepped()
            probe = torch.cat([b.state_features[:, -1] for b in batches])[: s.batch_size]
        bar.close()
        self.critic.eval()
        return {**metrics.means(), **self.recycle(learner, probe)}

    def recycle(self, learner: Learner, probe: torch.Tensor) -> dict[str, float]:
        """Score the critic's neurons on one random timestep of the first samples (gathered over
        ranks); on reset epochs re-initialise the active (or dormant) ones."""
        activations = [learner.gather(a) for a in hidden_activations(self.critic, probe)]
        scores = neuron_scores(activations)
        dormant = [score <= self.dormant_threshold for score in scores]
        total = sum(len(mask) for mask in dormant)
        count = sum(int(mask.sum()) for mask in dormant)
        metrics = {"dormant_neurons": float(count), "dormant_fraction": count / total}
        flat = torch.cat(dormant).cpu()
        if self.previous_dormant is not None and count:
            previous = torch.tensor([v for layer in self.previous_dormant for v in layer])
            metrics["dormant_still_dormant"] = (flat & previous).sum().item() / count
        self.previous_dormant = [mask.cpu().tolist() for mask in dormant]
        epoch = learner.current_epoch
        if self.neuron_reset and (epoch + 1) % self.neuron_reset_freq == 0:
            masks = dormant if self.reset_which == "dormant" else [~mask for mask in dormant]
            # Draws from a stream of their own, the same on every rank (the critic stays identical
            # across ranks), and the training streams are untouched.
            reset_neurons(self.critic, masks, self.critic_optimizer, RandomStream(int(learner.cfg.seed) * 100_003 + epoch))
            metrics["reset_neurons"] = float(sum(int(mask.sum()) for mask in masks))
        return metrics

    # -- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "per_prompt_moments": self.per_prompt_moments.state_dict() if self.per_prompt_moments else None,
            "global_moments": self.global_moments.state_dict(),
            "kl": self.kl.state_dict() if self.kl else None,
            "previous_dormant": self.previous_dormant,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.per_prompt_moments is not None and state.get("per_prompt_moments") is not None:
            self.per_prompt_moments.load_state_dict(state["per_prompt_moments"])
        self.global_moments.load_state_dict(state["global_moments"])
        if self.kl is not None and state.get("kl") is not None:
            self.kl.load_state_dict(state["kl"])
        self.previous_dormant = state.get("previous_dormant")

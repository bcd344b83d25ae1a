"""Reward-weighted regression and filter-and-finetune (docs/algorithms.md#rwr-and-rwr-sparse).

Generation is treated as a one-step bandit: the policy is fine-tuned with the ordinary denoising
loss on its own sampled final latents, each sample weighted by exp(beta * r) (RWR) or kept only
when its reward is in the top percentile (RWR-sparse). The reference ran sampling and fine-tuning
as two scripts in a bash loop; here each epoch samples, weights, then fine-tunes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rlft.algorithms.base import Algorithm, EpochSamples, Learner, MetricMeans, Targets
from rlft.families.base import Conditioning, DiffusionPolicy
from rlft.streams import RandomStream
from rlft.trajectories import Trajectories


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def rwr_weights(rewards: np.ndarray, prompts: list[str], beta: float, per_prompt: bool) -> np.ndarray:
    """w = N * softmax(beta * r) over the epoch (mean 1); per prompt, the softmax is taken within
    each group of identical prompts and scaled by the group's size (mean 1 within every group)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if not per_prompt:
        return len(rewards) * _softmax(beta * rewards)
    weights = np.empty_like(rewards)
    groups = np.asarray(prompts, dtype=object)
    for prompt in dict.fromkeys(prompts):
        members = groups == prompt
        weights[members] = members.sum() * _softmax(beta * rewards[members])
    return weights


def top_percentile_weights(rewards: np.ndarray, percentile: float) -> np.ndarray:
    """1 for r >= the q-th percentile of this epoch's rewards, else 0 (not trained on)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return (rewards >= np.percentile(rewards, percentile)).astype(np.float64)


def weighted_denoising_loss(
    policy: DiffusionPolicy,
    latents: torch.Tensor,
    conditioning: Conditioning,
    weights: torch.Tensor,
    guidance_scale: float,
    stream: RandomStream,
    window: tuple[float, float] = (0.0, 1.0),
    normalizer: float | None = None,
) -> torch.Tensor:
    """sum_i w_i * L_i / normalizer (by default the batch size: the mean over the batch), L_i the
    family's own denoising loss of sample i (SD 1.x: the DDPM noise or velocity regression; SD3:
    flow matching's) at noise levels drawn from `window`'s part of the chain
    (docs/algorithms.md#the-weighted-denoising-loss)."""
    per_sample = policy.denoising_loss(latents, conditioning, guidance_scale, stream, window)
    return (weights * per_sample).sum() / (len(latents) if normalizer is None else normalizer)


class RewardWeightedRegression(Algorithm):
    """RWR: exponentiated-reward weights; `temperature` is the inverse temperature beta
    (docs/algorithms.md#rwr-weights). It trains on final samples only, so any kernel samples them."""

    needs_log_probs = False

    def __init__(self, temperature: float = 0.2, per_prompt_weights: bool = False):
        self.beta = temperature
        self.per_prompt = per_prompt_weights

    def advantages(self, samples: EpochSamples) -> Targets:
        weights = rwr_weights(samples.rewards.cpu().double().numpy(), samples.prompts, self.beta, self.per_prompt)
        return Targets(torch.as_tensor(weights, dtype=torch.float32))

    def optimize(self, learner: Learner, trajectories: Trajectories, stream: RandomStream) -> dict[str, float]:
        """num_inner_epochs shuffled passes over the samples with a non-zero weight (all of them for
        RWR, the kept ones for RWR-sparse); an optimizer step every GA minibatches and after the last.
        The noise levels trained on are those of train.timestep_window's part of the chain.

        Ranks keep different numbers of samples (RWR-sparse's top percentile is global; RWR's
        weights can underflow to 0), but under DDP every backward is a collective, so every rank
        runs the minibatches of the rank that kept most: a rank that has run out takes one sample
        with weight 0 (a zero gradient that still joins the all-reduce). Each minibatch's loss is
        normalized by its sample count over all ranks, so that DDP's mean over ranks is the mean
        over every rank's samples of that minibatch (on one process: the minibatch's mean)."""
        t = learner.cfg.train
        guidance = learner.cfg.sample.guidance_scale if t.cfg else 1.0
        window = tuple(t.timestep_window)
        final_latents = trajectories.chain[:, -1]
        weights = trajectories.advantages
        kept = weights.nonzero().squeeze(-1)
        counts = learner.gather(torch.tensor([len(kept)], device=weights.device)).cpu()  # every rank's
        num_minibatches = math.ceil(int(counts.max()) / t.batch_size)
        accumulation = t.gradient_accumulation_steps
        metrics = MetricMeans()
        bar = learner.progress(t.num_inner_epochs * num_minibatches)
        for _ in range(t.num_inner_epochs):
            order = kept[stream.permutation(len(kept), kept.device)]
            for index in range(num_minibatches):
                rows = order[index * t.batch_size : (index + 1) * t.batch_size]
                sample_weights = weights[rows]
                if not len(rows):  # this rank has run out: a zero-weight sample keeps it in step
                    rows, sample_weights = rows.new_zeros(1), weights.new_zeros(1)
                in_minibatch = (counts - index * t.batch_size).clamp(0, t.batch_size).sum().item()
                loss = weighted_denoising_loss(
                    learner.policy,
                    final_latents[rows],
                    trajectories.prompt_embeds[rows],
                    sample_weights,
                    guidance,
                    stream,
                    window,
                    normalizer=in_minibatch / len(counts),  # x ranks: undoes DDP's mean over ranks
                )
                # the mean over this accumulation window's minibatches (the last window may be short)
                window_start = index - index % accumulation
                steps_after = (index + 1) % accumulation == 0 or index + 1 == num_minibatches
                learner.backpropagate(loss / min(accumulation, num_minibatches - window_start), steps_after)
                metrics.add(loss=loss)  # its mean over ranks is the minibatch's mean over every rank's samples
                bar.update()
                if steps_after:
                    learner.optimizer_step()
                    metrics.stepped()
        bar.close()
        return {**metrics.means(), "weight_max": weights.max().item(), "kept_fraction": len(kept) / len(weights)}


class FilterAndFinetune(RewardWeightedRegression):
    """RWR-sparse: fine-tune only on the samples whose reward reaches the epoch's q-th percentile."""

    def __init__(self, percentile: float = 90.0):
        self.percentile = percentile

    def advantages(self, samples: EpochSamples) -> Targets:
        weights = top_percentile_weights(samples.rewards.cpu().double().numpy(), self.percentile)
        return Targets(torch.as_tensor(weights, dtype=torch.float32))

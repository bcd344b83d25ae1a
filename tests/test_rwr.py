"""RWR weights, sparse filtering and the weighted denoising loss (docs/algorithms.md#rwr-and-rwr-sparse)."""

import math

import numpy as np
import pytest
import torch

from rlft.algorithms import FilterAndFinetune, RewardWeightedRegression
from rlft.algorithms.base import EpochSamples
from rlft.algorithms.rwr import rwr_weights, top_percentile_weights, weighted_denoising_loss
from rlft.families.sd1 import window_timesteps
from rlft.streams import RandomStream
from tests.test_policy import make_policy


def test_global_weights_are_n_times_softmax():
    weights = rwr_weights(np.array([0.0, math.log(2.0)]), ["a", "b"], beta=1.0, per_prompt=False)
    np.testing.assert_allclose(weights, [2 / 3, 4 / 3])


def test_inverse_temperature_scales_the_rewards():
    rewards = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(
        rwr_weights(rewards, ["x"] * 3, beta=0.2, per_prompt=False),
        rwr_weights(rewards / 5, ["x"] * 3, beta=1.0, per_prompt=False),
    )


def test_per_prompt_weights_have_mean_one_in_every_group():
    rng = np.random.default_rng(0)
    prompts = ["a", "b", "a", "c", "b", "a", "c", "c", "c"]
    weights = rwr_weights(rng.normal(size=9), prompts, beta=2.0, per_prompt=True)
    for prompt in set(prompts):
        group = [w for w, p in zip(weights, prompts) if p == prompt]
        assert np.mean(group) == pytest.approx(1.0)
    # within a group the softmax is the group's own
    a = np.array([w for w, p in zip(weights, prompts) if p == "a"])
    assert a.sum() == pytest.approx(3.0)


def test_sparse_keeps_the_top_percentile():
    rewards = np.arange(100, dtype=float)
    weights = top_percentile_weights(rewards, 90)
    kept = weights > 0
    assert kept.sum() == 10 and kept[90:].all()  # the 90th percentile of 0..99 is 89.1
    assert set(weights.tolist()) == {0.0, 1.0}  # the kept samples are trained on with the plain loss
    assert top_percentile_weights(np.ones(8), 90).tolist() == [1.0] * 8  # ties are all kept


def test_algorithms_return_weights_as_advantages():
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert RewardWeightedRegression(temperature=1.0).advantages(
        EpochSamples(rewards, ["p"] * 4)
    ).advantages.mean().item() == pytest.approx(1)
    assert FilterAndFinetune(percentile=50).advantages(EpochSamples(rewards, ["p"] * 4)).advantages.tolist() == [
        0.0,
        0.0,
        1.0,
        1.0,
    ]


def test_weighted_denoising_loss_matches_a_hand_computation():
    policy = make_policy("tiny")
    latents = torch.randn(3, 4, 8, 8)
    embeds = policy.encode_prompts(["a cat", "a dog", "a fox"])
    weights = torch.tensor([0.5, 0.0, 2.5])
    loss = weighted_denoising_loss(policy, latents, embeds, weights, 5.0, RandomStream(3))

    generator = torch.Generator().manual_seed(3)  # the same draws, by hand
    t = torch.randint(0, 1000, (3,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    a = policy.scheduler.alphas_cumprod[t].reshape(3, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    with torch.no_grad():
        uncond = policy.unet(noisy, t, policy.negative_embedding.expand(3, -1, -1)).sample
        cond = policy.unet(noisy, t, embeds).sample
    guided = uncond + 5.0 * (cond - uncond)
    expected = (weights * ((guided - noise) ** 2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)


def test_denoising_loss_targets_the_velocity_for_a_v_prediction_model():
    from rlft.ddim import make_scheduler

    policy = make_policy("tiny")
    policy.scheduler = make_scheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    latents = torch.randn(2, 4, 8, 8)
    embeds = policy.encode_prompts(["a cat", "a dog"])
    weights = torch.tensor([1.0, 3.0])
    loss = weighted_denoising_loss(policy, latents, embeds, weights, 1.0, RandomStream(4))

    generator = torch.Generator().manual_seed(4)
    t = torch.randint(0, 1000, (2,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    a = policy.scheduler.alphas_cumprod[t].reshape(2, 1, 1, 1)
    with torch.no_grad():
        predicted = policy.unet(a.sqrt() * latents + (1 - a).sqrt() * noise, t, embeds).sample
    velocity = a.sqrt() * noise - (1 - a).sqrt() * latents
    expected = (weights * ((predicted - velocity) ** 2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)


def test_the_timestep_window_maps_to_the_noise_levels_of_that_part_of_the_chain():
    assert window_timesteps(1000, (0.0, 1.0)) == range(1000)  # the reference: every t
    assert window_timesteps(1000, (0.0, 0.4)) == range(600, 1000)  # the first 40%: the noisiest t
    assert window_timesteps(1000, (0.5, 1.0)) == range(500)
    assert window_timesteps(10, (0.25, 0.3)) == range(7, 8)  # rounded, never empty


def test_the_loss_draws_its_timesteps_from_the_window():
    policy = make_policy("tiny")
    seen = []
    policy.unet.register_forward_pre_hook(lambda unet, args: seen.append(args[1].clone()))
    latents = torch.randn(64, 4, 8, 8)
    embeds = policy.encode_prompts(["a cat"]).expand(64, -1, -1)
    weighted_denoising_loss(policy, latents, embeds, torch.ones(64), 1.0, RandomStream(0), (0.0, 0.4))
    drawn = torch.cat(seen)
    assert drawn.min() >= 600 and drawn.max() <= 999 and drawn.unique().numel() > 30

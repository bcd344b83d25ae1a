"""TDPO / TDPO-R maths (docs/algorithms.md#tdpo-and-tdpo-r): returns, temporal advantages, losses, running moments,
dormant-neuron scores and resets."""

import math

import numpy as np
import pytest
import torch

from rlft.algorithms import TDPO
from rlft.algorithms.base import EpochSamples
from rlft.algorithms.critic import Critic
from rlft.algorithms.recycler import hidden_activations, neuron_scores, reset_neurons
from rlft.algorithms.running_moments import RunningMoments
from rlft.algorithms.stat_tracker import EPS, PerPromptStatTracker
from rlft.algorithms.tdpo import (
    clipped_policy_loss,
    clipped_value_loss,
    discounted_returns,
    temporal_advantages,
)
from rlft.embedders import tiny_clip
from rlft.errors import ConfigError
from rlft.streams import RandomStream


def test_returns_with_discount_and_step_terms():
    returns = discounted_returns(torch.tensor([1.0, 2.0]), 3, gamma=0.5)
    torch.testing.assert_close(returns, torch.tensor([[0.25, 0.5, 1.0], [0.5, 1.0, 2.0]], dtype=torch.float64))
    terms = torch.full((1, 3), 0.1)
    returns = discounted_returns(torch.tensor([1.0]), 3, gamma=0.5, step_terms=terms)
    torch.testing.assert_close(returns, torch.tensor([[0.425, 0.65, 1.1]], dtype=torch.float64))


def test_undiscounted_returns_equal_the_reward_at_every_step():
    rewards = torch.tensor([0.3, -1.2, 2.0])
    returns = discounted_returns(rewards, 5, gamma=1.0)
    torch.testing.assert_close(returns, rewards.double()[:, None].expand(3, 5))


def test_temporal_advantages_are_returns_minus_values_normalized_over_all_entries():
    returns = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    values = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    raw = temporal_advantages(returns, values, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[1.0, 0.0], [2.0, 3.0]], dtype=torch.float64))
    normalized = temporal_advantages(returns, values, normalize=True)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(normalized, (raw - 1.5) / (raw.std() + 1e-8))


def test_clipped_value_loss_hand_values():
    values, old, target = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.0])
    # unclipped errors [1, 0]; clipped values [0.7, 0.3] -> errors [0.49, 0.09]; max [1, 0.09]
    loss, clipfrac = clipped_value_loss(values, old, target, 0.2)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.09) / 2)
    assert clipfrac.item() == 0.5
    loss, clipfrac = clipped_value_loss(values, old, target, 0.0)
    assert loss.item() == pytest.approx(0.25) and clipfrac.item() == 0.0


def test_clipped_policy_loss_reports_k3_kl_and_pg_clipfrac():
    log_prob = torch.tensor([math.log(1.5), 0.0], requires_grad=True)
    loss, info = clipped_policy_loss(log_prob, torch.zeros(2), torch.tensor([1.0, -1.0]), 0.2)
    # sample 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped larger); sample 1: ratio 1: 1
    assert loss.item() == pytest.approx((-1.2 + 1.0) / 2)
    assert info["pg_clipfrac"].item() == 0.5
    assert info["approx_kl"].item() == pytest.approx((0.5 - math.log(1.5)) / 2)


def test_global_running_moments_match_numpy():
    moments = RunningMoments()
    moments.update(np.array([1.0, 2.0, 3.0]))
    assert moments.mean == pytest.approx(2.0) and moments.std == pytest.approx(1.0)
    moments.update(np.array([5.0]))
    everything = np.array([1.0, 2.0, 3.0, 5.0])
    assert moments.mean == pytest.approx(everything.mean())
    assert moments.var == pytest.approx(everything.var())
    assert moments.std == pytest.approx(everything.std(ddof=1))
    fresh = RunningMoments()
    np.testing.assert_allclose(
        fresh.normalize(np.array([1.0, 3.0]), "scaling"), np.array([1.0, 3.0]) / (math.sqrt(2) + 1e-8)
    )


def test_per_prompt_scaling_divides_by_the_std_only():
    tracker = PerPromptStatTracker(buffer_size=8, min_count=1, mode="scaling")
    np.testing.assert_allclose(tracker.update(["a", "a"], np.array([1.0, 3.0])), np.array([1.0, 3.0]) / (1.0 + EPS))


def _tdpo(**kwargs) -> TDPO:
    return TDPO(tiny_clip(), critic_hidden_sizes=(8, 4), critic_dropout=(0.0, 0.0), **kwargs)


def test_tdpo_advantages_with_gamma_one_and_global_norm():
    algorithm = _tdpo(per_prompt_running_moments=False)
    rewards = torch.tensor([1.0, 2.0, 4.0, 5.0])
    values = torch.zeros(4, 3)
    targets = algorithm.advantages(EpochSamples(rewards, ["p"] * 4, values=values))
    normalized = (rewards.double() - 3.0) / (rewards.double().std() + 1e-8)  # first batch: running = batch
    torch.testing.assert_close(targets.returns, normalized.float()[:, None].expand(4, 3))
    assert targets.advantages.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert targets.advantages.std().item() == pytest.approx(1.0, abs=1e-5)


def test_tdpo_rejects_norm_and_scaling_together():
    with pytest.raises(ConfigError, match="reward_norm and algorithm.reward_scaling"):
        _tdpo(reward_norm=True, reward_scaling=True)


def test_critic_shape_and_init():
    critic = Critic(768)
    assert [layer.out_features for layer in critic.linear_layers()] == [1024, 128, 64, 16, 1]
    assert critic.hidden[0].weight.std().item() == pytest.approx(1 / 769, rel=0.02)
    assert all(layer.bias.abs().sum() == 0 for layer in critic.linear_layers())
    assert critic(torch.randn(5, 768)).shape == (5,)


def test_neuron_scores_hand_values():
    scores = neuron_scores([torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])])
    torch.testing.assert_close(scores[0], torch.tensor([2.0, 0.0, 1.0]) / (1.0 + 1e-9))


def test_hidden_activations_are_relu_of_each_hidden_layer():
    critic = Critic(4, hidden_sizes=(3, 2), dropout=(0.5, 0.5))
    features = torch.randn(6, 4)
    first, second = hidden_activations(critic, features)
    expected_first = critic.hidden[0](features)
    torch.testing.assert_close(first, expected_first.relu())
    torch.testing.assert_close(second, critic.hidden[1](expected_first).relu())  # dropout off while scoring


def _trained_critic():
    torch.manual_seed(0)
    critic = Critic(4, hidden_sizes=(3, 2), dropout=(0.0, 0.0))
    for layer in critic.linear_layers():
        torch.nn.init.normal_(layer.bias, std=0.1)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-2)
    critic(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    return critic, optimizer


def test_reset_touches_only_the_masked_neurons_and_their_moments():
    critic, optimizer = _trained_critic()
    before = {name: p.detach().clone() for name, p in critic.named_parameters()}
    masks = [torch.tensor([True, False, False]), torch.tensor([False, True])]
    reset_neurons(critic, masks, optimizer, RandomStream(1))
    after = dict(critic.named_parameters())
    changed = {name: before[name] != after[name].detach() for name in before}
    # hidden 0, neuron 0: incoming row 0 and bias 0 of layer 0, outgoing column 0 of layer 1
    assert changed["hidden.0.weight"][0].all() and not changed["hidden.0.weight"][1:].any()
    assert after["hidden.0.bias"][0] == 0 and not changed["hidden.0.bias"][1:].any()
    # hidden 1, neuron 1: incoming row 1 of layer 1, outgoing column 1 of the head
    layer1 = changed["hidden.1.weight"]
    assert layer1[:, 0].all() and layer1[1].all()
    assert not layer1[0, 1:].any()
    assert after["hidden.1.bias"][1] == 0 and not changed["hidden.1.bias"][0]
    assert changed["head.weight"][:, 1].all() and not changed["head.weight"][:, 0].any()
    assert not changed["head.bias"].any()
    for name, param in critic.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = optimizer.state[param][key]
            touched = {
                "hidden.0.weight": lambda m: m[0],
                "hidden.0.bias": lambda m: m[0],
                "hidden.1.weight": lambda m: torch.cat([m[:, 0], m[1]]),
                "hidden.1.bias": lambda m: m[1:2],
                "head.weight": lambda m: m[:, 1],
            }.get(name)
            if touched is not None:
                assert (touched(moment) == 0).all(), (name, key)
    untouched = optimizer.state[critic.hidden[0].weight]["exp_avg"][1:]
    assert (untouched != 0).any()
    # the re-initialised weights have the construction std and repeat exactly for the same seed
    again, optimizer_again = _trained_critic()
    reset_neurons(again, masks, optimizer_again, RandomStream(1))
    for (_, a), (_, b) in zip(critic.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b)


def test_reset_draws_leave_the_global_rng_alone():
    critic, optimizer = _trained_critic()
    state = torch.get_rng_state()
    reset_neurons(
        critic, [torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)], optimizer, RandomStream(0)
    )
    assert torch.equal(state, torch.get_rng_state())

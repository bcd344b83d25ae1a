"""The PPO-clipped DDPO loss and its diagnostics on hand-computed values."""

import math

import pytest
import torch

from rlft.algorithms import ppo_clipped_loss


def loss_for(ratio: float, advantage: float, clip: float) -> float:
    loss, _ = ppo_clipped_loss(torch.tensor([math.log(ratio)]), torch.tensor([0.0]), torch.tensor([advantage]), clip)
    return loss.item()


@pytest.mark.parametrize(
    "ratio,advantage,expected",
    [
        (1.0, 2.0, -2.0),  # on-policy: -A
        (1.5, 2.0, -2.4),  # A > 0, ratio above 1 + eps: clipped to 1.2 -> max(-3, -2.4)
        (0.5, 2.0, -1.0),  # A > 0, ratio below 1 - eps: the unclipped term is larger -> -1
        (1.5, -2.0, 3.0),  # A < 0, ratio above: unclipped 3 beats clipped 2.4
        (0.5, -2.0, 1.6),  # A < 0, ratio below 1 - eps: clipped to 0.8 -> max(1, 1.6)
        (1.1, 1.0, -1.1),  # inside the trust region nothing is clipped
    ],
)
def test_clipped_surrogate_values(ratio, advantage, expected):
    assert loss_for(ratio, advantage, clip=0.2) == pytest.approx(expected, rel=1e-6)


def test_minibatch_mean_and_metrics():
    log_ratio = torch.tensor([0.0, math.log(1.5), math.log(0.5), 0.05])
    advantages = torch.tensor([1.0, 2.0, -2.0, -1.0])
    loss, metrics = ppo_clipped_loss(log_ratio, torch.zeros(4), advantages, clip_range=0.2)
    # per-sample: -1, -2.4, 1.6, 1.05127
    assert loss.item() == pytest.approx((-1 - 2.4 + 1.6 + math.exp(0.05)) / 4, rel=1e-6)
    assert metrics["clipfrac"].item() == pytest.approx(0.5)
    assert metrics["approx_kl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + 0.05**2) / 4)


def test_gradient_vanishes_where_clipped():
    log_prob = torch.tensor([math.log(1.5), math.log(1.5)], requires_grad=True)
    loss, _ = ppo_clipped_loss(log_prob, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_range=0.2)
    loss.backward()
    # A > 0 with ratio past 1 + eps: no gradient; A < 0 there: d/dlogp of -A*ratio/2 = ratio/2
    assert log_prob.grad.tolist() == pytest.approx([0.0, 0.75])


def test_score_function_loss_and_its_gradient():
    from rlft.algorithms import score_function_loss

    log_prob = torch.tensor([-1.0, 0.5], requires_grad=True)
    loss, metrics = score_function_loss(log_prob, log_prob.detach(), torch.tensor([2.0, -1.0]))
    assert loss.item() == pytest.approx(-(2.0 * -1.0 + -1.0 * 0.5) / 2)
    loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([-1.0, 0.5])  # -A / n
    assert metrics["ratio"].item() == 1.0


def test_score_function_gradient_equals_clipped_gradient_at_ratio_one():
    from rlft.algorithms import score_function_loss

    advantages = torch.tensor([1.5, -0.5, 2.0])
    grads = []
    for fn in (
        lambda lp: ppo_clipped_loss(lp, lp.detach(), advantages, 1e-4)[0],
        lambda lp: score_function_loss(lp, lp.detach(), advantages)[0],
    ):
        log_prob = torch.tensor([-0.3, 0.2, 0.1], requires_grad=True)
        fn(log_prob).backward()
        grads.append(log_prob.grad)
    torch.testing.assert_close(grads[0], grads[1])

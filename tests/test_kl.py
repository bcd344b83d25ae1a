"""KL regularization (docs/algorithms.md#kl-regularization): the six penalties,
the controllers, the reference policy."""

import math

import pytest
import torch

from rlft.algorithms import DDPO, KLRegularization
from rlft.algorithms.base import EpochSamples
from rlft.algorithms.kl import KLController, kl_penalty
from rlft.errors import ConfigError
from rlft.policy import Policy
from rlft.streams import RandomStream
from tests.conftest import compose_config
from tests.test_policy import make_policy

LOG_PROB = torch.tensor([0.0, -1.0])
REFERENCE = torch.tensor([-0.5, 0.0])  # delta = [0.5, -1.0]


def _js(a: float, b: float) -> float:
    log_m = math.log((math.exp(a) + math.exp(b)) / 2)
    return 0.5 * (max(a - log_m, 0.0) + max(b - log_m, 0.0))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("kl", [0.5, -1.0]),
        ("abs", [0.5, 1.0]),
        ("square", [0.125, 0.5]),
        ("clip", [0.5, 0.0]),
        ("approx", [math.exp(0.5) - 1 - 0.5, math.exp(-1.0) - 1 + 1.0]),
        ("js", [_js(0.0, -0.5), _js(-1.0, 0.0)]),
    ],
)
def test_penalties_match_hand_values(kind, expected):
    torch.testing.assert_close(kl_penalty(LOG_PROB, REFERENCE, kind), torch.tensor(expected))


def test_unknown_penalty_is_a_config_error():
    with pytest.raises(ConfigError, match="algorithm.kl.penalty='kld'"):
        KLRegularization(coef=1.0, penalty="kld")


def test_fixed_controller_never_moves():
    controller = KLController(0.2)
    controller.update(mean_kl=100.0, num_samples=256)
    assert controller.value == 0.2


def test_adaptive_controller_update():
    controller = KLController(0.2, target=1.0, horizon=2000)
    controller.update(mean_kl=1.5, num_samples=100)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 2000))
    controller.update(mean_kl=0.9, num_samples=100)  # error -0.1
    assert controller.value == pytest.approx(0.2 * 1.01 * (1 - 0.1 * 100 / 2000))


def test_reward_terms_use_the_coefficient_before_the_update():
    kl = KLRegularization(coef=0.5, penalty="clip", init_kl_coef=0.2, target=0.1)
    log_probs = torch.tensor([[0.0, -1.0], [1.0, 1.0]])
    reference = torch.tensor([[-0.5, 0.0], [1.0, 0.5]])  # delta [[0.5, -1], [0, 0.5]]
    terms, metrics = kl.reward_terms(log_probs, reference)
    torch.testing.assert_close(terms, -0.5 * 0.2 * torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64))
    assert metrics["mean_kl"] == pytest.approx((-0.5 + 0.5) / 2)
    assert metrics["mean_kl_per_step"] == pytest.approx(0.0)
    assert metrics["kl_coef"] == 0.2
    assert kl.controller.value == pytest.approx(0.2 * (1 - 0.2 * 2 / 2000))  # mean_kl 0 < target


def test_ddpo_subtracts_the_summed_penalty_from_each_reward():
    algorithm = DDPO(per_prompt_stat_tracking=False, adv_clip_max=100, kl=KLRegularization(coef=1.0, penalty="kl"))
    rewards = torch.tensor([1.0, 2.0, 4.0])
    log_probs = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    reference = torch.zeros(3, 2)
    targets = algorithm.advantages(EpochSamples(rewards, ["a", "b", "c"], log_probs, reference))
    penalized = torch.tensor([1.0, 2.0 - 0.2 * 2, 4.0], dtype=torch.float64)
    expected = (penalized - penalized.mean()) / (penalized.std(unbiased=False) + 1e-8)
    torch.testing.assert_close(targets.advantages, expected.float())
    assert targets.metrics["mean_kl"] == pytest.approx(2 / 3)


def test_kl_switched_off_asks_for_no_reference():
    assert not DDPO(kl=KLRegularization(coef=0.0)).needs_reference
    assert DDPO(kl=KLRegularization(coef=0.1)).needs_reference


@pytest.mark.parametrize("model", ["tiny", "tiny_lora"])
def test_reference_policy_is_the_base_model(model):
    """Before training the reference scores every action exactly as the policy does; after the
    trainable weights change, the reference still returns the base model's log-probs."""
    cfg = compose_config([f"model={model}"])
    from hydra.utils import instantiate

    policy = Policy(instantiate(cfg.model.components), lora=cfg.model.lora, keep_reference=True)
    if model == "tiny_lora":
        assert policy.reference_unet is None  # no second copy: adapters are switched off instead
    generator = torch.Generator().manual_seed(0)
    schedule = policy.schedule(4)
    x = torch.randn(2, *policy.latent_shape, generator=generator)
    first = torch.zeros(2, dtype=torch.long)  # the first step of the chain
    embeds = policy.encode_prompts(["a cat", "a dog"])

    def log_prob_of(action=None, reference=False):
        noise = None if action is not None else RandomStream(1).normal(x.shape)
        step = policy.transition(x, first, schedule, embeds, 5.0, noise=noise, next_latents=action, reference=reference)
        return step.sample, step.log_prob

    with torch.no_grad():
        action, log_prob = log_prob_of()
        _, reference = log_prob_of(action, reference=True)
        torch.testing.assert_close(reference, log_prob)
        for param in policy.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
        _, moved = log_prob_of(action)
        _, still = log_prob_of(action, reference=True)
    assert not torch.allclose(moved, log_prob)
    torch.testing.assert_close(still, reference)
    assert make_policy(model).reference_unet is None  # no copy unless asked for

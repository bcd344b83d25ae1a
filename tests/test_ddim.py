"""The DDIM step's log-probability against closed forms and the table of
docs/algorithms.md#reference-values."""

import math

import pytest
import torch

from rlft.ddim import SIGMA_FLOOR, ddim_step_with_logprob, make_scheduler

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@pytest.fixture
def scheduler():
    s = make_scheduler()
    s.set_timesteps(50)
    return s


def sigma_at(scheduler, t: int) -> float:
    """sigma_t recovered from the log-prob of the mean itself: log p(mu) = -log sigma - log sqrt(2 pi)."""
    x = torch.randn(1, 4, 2, 2, dtype=torch.float32)
    eps = torch.randn_like(x)
    # Score the mean, computed by hand: its log-prob is -log sigma - log sqrt(2 pi).
    a = scheduler.alphas_cumprod.double()
    a_t = a[t]
    a_prev = a[t - 20] if t - 20 >= 0 else torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    mu = a_prev.sqrt() * x0 + (1 - a_prev - var).sqrt() * eps.double()
    _, log_prob = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, prev_sample=mu.float())
    return math.exp(-(log_prob.item() + LOG_SQRT_2PI))


def test_leading_timesteps(scheduler):
    assert scheduler.timesteps[:3].tolist() == [981, 961, 941]
    assert scheduler.timesteps[-2:].tolist() == [21, 1]
    assert len(scheduler.timesteps) == 50


@pytest.mark.parametrize(
    "t,alpha_t,alpha_prev,sigma",
    [
        (981, 0.0057755, 0.0072817, 0.45446),
        (961, 0.0072817, 0.0091173, 0.44828),
        (501, 0.274999, 0.302296, 0.29478),
        (21, 0.980381, 0.998296, 0.039480),
        (1, 0.998296, 0.99915, 0.020648),
    ],
)
def test_reference_table(scheduler, t, alpha_t, alpha_prev, sigma):
    a = scheduler.alphas_cumprod
    assert a[t].item() == pytest.approx(alpha_t, abs=1e-5)
    prev = a[t - 20].item() if t - 20 >= 0 else float(scheduler.final_alpha_cumprod)
    assert prev == pytest.approx(alpha_prev, abs=1e-5)
    assert sigma_at(scheduler, t) == pytest.approx(sigma, rel=1e-4)


def test_log_prob_is_the_closed_form_gaussian(scheduler):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5)
    eps = torch.randn_like(x)
    t = torch.tensor([981, 501, 21])
    action = torch.randn_like(x)
    _, log_prob = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, prev_sample=action)

    a = scheduler.alphas_cumprod.double()
    for i, ti in enumerate(t.tolist()):
        a_t, a_prev = a[ti], a[ti - 20]
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        x0 = (x[i].double() - (1 - a_t).sqrt() * eps[i].double()) / a_t.sqrt()
        mu = a_prev.sqrt() * x0 + (1 - a_prev - var).sqrt() * eps[i].double()
        expected = torch.distributions.Normal(mu, var.sqrt()).log_prob(action[i].double()).mean()
        assert log_prob[i].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("t,expected", [(981, -0.630), (1, 2.461)])
def test_on_policy_expected_log_prob(scheduler, t, expected):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 16, 16, generator=generator)
    eps = torch.randn(64, 4, 16, 16, generator=generator)
    _, log_prob = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, noise=torch.randn(x.shape, generator=generator))
    # 65,536 elements: the standard error of the mean of -z^2/2 is 0.0028.
    assert log_prob.mean().item() == pytest.approx(expected, abs=0.01)


def test_sampled_action_rescored_identically(scheduler):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 8, 8)
    eps = torch.randn_like(x)
    sampled, log_prob = ddim_step_with_logprob(scheduler, eps, 501, x, eta=1.0, noise=torch.randn(x.shape, generator=generator))
    _, rescored = ddim_step_with_logprob(scheduler, eps, 501, x, eta=1.0, prev_sample=sampled)
    assert torch.equal(log_prob, rescored)


def test_half_precision_action_is_scored_as_stored(scheduler):
    """The behaviour log-prob is computed on the fp16-rounded action that is stored
    (docs/algorithms.md#importance-ratio-before-the-first-update)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4, 8, 8).half()
    eps = torch.randn(4, 4, 8, 8).half()
    sampled, log_prob = ddim_step_with_logprob(scheduler, eps, 1, x, eta=1.0, noise=torch.randn(x.shape, generator=generator))
    assert sampled.dtype == torch.float16
    _, rescored = ddim_step_with_logprob(scheduler, eps, 1, x, eta=1.0, prev_sample=sampled)
    assert torch.equal(log_prob, rescored)


def test_unclamped_previous_timestep_uses_final_alpha():
    """With set_alpha_to_one the last step goes to alpha = 1 (sigma = 0, floored), not alpha_0."""
    scheduler = make_scheduler(set_alpha_to_one=True)
    scheduler.set_timesteps(50)
    x = torch.randn(2, 4, 4, 4)
    eps = torch.randn_like(x)
    x_prev, log_prob = ddim_step_with_logprob(scheduler, eps, 1, x, eta=1.0, noise=torch.randn_like(x))
    a_t = scheduler.alphas_cumprod[1]
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    torch.testing.assert_close(x_prev, x0, rtol=1e-5, atol=1e-5)  # alpha_prev = 1: the step lands on x0
    assert torch.allclose(log_prob, torch.full_like(log_prob, -math.log(SIGMA_FLOOR) - LOG_SQRT_2PI), atol=1e-2)


def test_sigma_floor_keeps_log_prob_finite(scheduler):
    x = torch.randn(2, 4, 4, 4)
    eps = torch.randn_like(x)
    _, log_prob = ddim_step_with_logprob(scheduler, eps, 501, x, eta=1e-12, prev_sample=x)
    assert torch.isfinite(log_prob).all()


def test_per_sample_timesteps_match_scalar_calls(scheduler):
    x = torch.randn(2, 4, 4, 4)
    eps = torch.randn_like(x)
    action = torch.randn_like(x)
    _, both = ddim_step_with_logprob(scheduler, eps, torch.tensor([981, 21]), x, 1.0, prev_sample=action)
    _, first = ddim_step_with_logprob(scheduler, eps[:1], 981, x[:1], 1.0, prev_sample=action[:1])
    _, second = ddim_step_with_logprob(scheduler, eps[1:], 21, x[1:], 1.0, prev_sample=action[1:])
    torch.testing.assert_close(both, torch.cat([first, second]))


def test_the_step_takes_either_noise_or_an_action(scheduler):
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(ValueError, match="either prev_sample"):
        ddim_step_with_logprob(scheduler, x, 501, x, 1.0, prev_sample=x, noise=x)
    with pytest.raises(ValueError, match="either prev_sample"):
        ddim_step_with_logprob(scheduler, x, 501, x, 1.0)


def test_v_prediction_on_a_zero_terminal_snr_schedule_steps_like_diffusers():
    """model=toy's schedule: every trailing timestep, the first at SNR 0, lands where diffusers'
    own DDIM step does (eta = 0, where the step is deterministic), and the log-prob stays finite."""
    scheduler = make_scheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[0] == 999 and scheduler.alphas_cumprod[999] < 1e-6
    x = torch.randn(2, 4, 8, 8)
    for t in scheduler.timesteps:
        v = torch.randn_like(x)
        ours, _ = ddim_step_with_logprob(scheduler, v, t, x, eta=0.0, noise=torch.randn_like(x))
        theirs = scheduler.step(v, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        _, log_prob = ddim_step_with_logprob(scheduler, v, t, x, eta=1.0, noise=torch.randn_like(x))
        assert torch.isfinite(log_prob).all()
        x = ours

"""The transition kernels of rlft/kernels/ as pure maths (docs/algorithms.md#rectified-flow-as-a-policy):
each against an independent float64 re-derivation, their deterministic limits, bit-exact re-scoring,
the on-policy expectation of the log-prob, the s = 1 first step, and the package's imports.
Pure tensors, no model: well under a second or two in all."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from rlft.ddim import make_scheduler
from rlft.kernels import (
    Transition,
    cps_transition,
    dance_grpo_transition,
    ddim_step_with_logprob,
    ddim_transition,
    euler_transition,
    flow_grpo_transition,
)

KERNELS = Path(__file__).resolve().parents[1] / "rlft" / "kernels"
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
SIGMA_1 = 0.95  # the first noise level below 1 of the schedules below
SHAPE = (4, 4, 8, 8)


def inputs(seed: int, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x, v, z = (torch.randn(shape, generator=generator) for _ in range(3))
    return x, v, z


def per_sample(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1, 1, 1)


def as64(sigma: float | torch.Tensor) -> torch.Tensor:
    """A noise level in float64, per sample (B, 1, 1, 1) if it is a tensor."""
    return per_sample(sigma.tolist()) if torch.is_tensor(sigma) else torch.tensor(sigma, dtype=torch.float64)


def reference_log_prob(action: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    normal = torch.distributions.Normal(mean, std.expand_as(mean))
    return normal.log_prob(action.double()).mean(dim=(1, 2, 3))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """1e-6 relative to the tensor's scale (elements near 0 carry float32's absolute rounding)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), rtol=1e-6, atol=1e-6 * scale)


# Per-sample steps (the first from s = 1) and one shared step given as numbers.
STEPS = [
    (torch.tensor([1.0, 0.8, 0.5, 0.2]), torch.tensor([SIGMA_1, 0.7, 0.3, 0.0])),
    (0.6, 0.45),
]


@pytest.mark.parametrize("sigma,sigma_next", STEPS)
def test_flow_grpo_against_the_score_form_in_float64(sigma, sigma_next):
    x, v, z = inputs(0)
    step = flow_grpo_transition(x, v, sigma, sigma_next, sigma_1=SIGMA_1, noise_level=0.7, noise=z)
    s, s2 = as64(sigma), as64(sigma_next)
    xd, vd = x.double(), v.double()
    # Derived independently: score of the rectified-flow marginal, reverse SDE drift v - g^2/2 score.
    x0_hat = xd - s * vd
    score = -(xd - (1 - s) * x0_hat) / s**2
    g = 0.7 * torch.sqrt(s / (1 - torch.where(s == 1, torch.tensor(SIGMA_1, dtype=torch.float64), s)))
    mean = xd + (vd - g**2 / 2 * score) * (s2 - s)
    std = g * torch.sqrt(s - s2)
    close(step.mean, mean)
    close(step.std.expand_as(step.mean), std.expand_as(mean))
    close(step.sample, mean + std * z.double())
    close(step.log_prob, reference_log_prob(step.sample, mean, std))


@pytest.mark.parametrize("sigma,sigma_next", STEPS)
def test_dance_grpo_against_the_score_form_in_float64(sigma, sigma_next):
    x, v, z = inputs(1)
    step = dance_grpo_transition(x, v, sigma, sigma_next, eta=0.3, noise=z)
    s, s2 = as64(sigma), as64(sigma_next)
    xd, vd = x.double(), v.double()
    score = -(xd - (1 - s) * (xd - s * vd)) / s**2
    mean = xd + (vd - 0.3**2 / 2 * score) * (s2 - s)
    std = 0.3 * torch.sqrt(s - s2)
    close(step.mean, mean)
    close(step.std.expand_as(step.mean), std.expand_as(mean))
    close(step.log_prob, reference_log_prob(step.sample, mean, std))


def test_cps_against_its_formulas_in_float64_and_preserves_the_coefficients():
    """Built from an exact x0 and eps, the CPS mean is (1 - s') x0 + s' cos(a pi/2) eps and the noise
    it adds brings the eps-coefficient's variance to exactly s'^2."""
    x0, eps, z = (t.double() for t in inputs(2))
    s, s2, a = 0.7, 0.4, 0.6
    x = (1 - s) * x0 + s * eps
    v = eps - x0
    step = cps_transition(x.float(), v.float(), s, s2, noise_level=a, noise=z.float())
    std = s2 * math.sin(a * math.pi / 2)
    mean = (1 - s2) * x0 + math.sqrt(s2**2 - std**2) * eps
    assert math.sqrt(s2**2 - std**2) ** 2 + std**2 == pytest.approx(s2**2, rel=1e-12)
    close(step.mean, mean)
    assert step.std.item() == pytest.approx(std, rel=1e-6)
    close(step.log_prob, reference_log_prob(step.sample, mean, torch.tensor(std, dtype=torch.float64)))
    # The SDE step from the same exact ends overshoots: its eps-coefficient is s' + delta g^2/(2s), and
    # with its own noise the variance is s'^2 + g^2 delta^2 / s + g^4 delta^2 / (4 s^2) (docs, CPS section).
    sde = flow_grpo_transition(x.float(), v.float(), s, s2, sigma_1=SIGMA_1, noise=z.float())
    g2, delta = 0.7**2 * s / (1 - s), s2 - s
    coefficient = s2 + delta * g2 / (2 * s)
    close(sde.mean, (1 - s2) * x0 + coefficient * eps)
    excess = coefficient**2 + sde.std.item() ** 2 - s2**2
    assert excess == pytest.approx(g2 * delta**2 / s + g2**2 * delta**2 / (4 * s**2), rel=1e-5)


def test_ddim_transition_against_the_formulas_in_float64_and_as_the_step_with_logprob():
    scheduler = make_scheduler()
    scheduler.set_timesteps(50)
    x, eps, z = inputs(3)
    t = torch.tensor([981, 501, 21, 1])
    step = ddim_transition(scheduler, eps, t, x, eta=1.0, noise=z)
    a = scheduler.alphas_cumprod.double()
    a_t = a[t].reshape(-1, 1, 1, 1)
    a_prev = torch.where(t >= 20, a[(t - 20).clamp(min=0)], torch.tensor(float(scheduler.final_alpha_cumprod)).double())
    a_prev = a_prev.reshape(-1, 1, 1, 1)
    x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps.double()
    torch.testing.assert_close(step.std.double(), std, rtol=1e-5, atol=0)  # alphas are float32 in the kernel
    torch.testing.assert_close(step.mean.double(), mean, rtol=1e-5, atol=1e-5)
    close(step.log_prob, reference_log_prob(step.sample, step.mean.double(), step.std.double()))
    sample, log_prob = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, noise=z)
    assert torch.equal(sample, step.sample) and torch.equal(log_prob, step.log_prob)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_level_zero_is_exactly_the_euler_step(dtype):
    x, v, z = (t.to(dtype) for t in inputs(4))
    sigma, sigma_next = torch.tensor([1.0, 0.8, 0.5, 0.1]), torch.tensor([SIGMA_1, 0.6, 0.25, 0.0])
    euler = euler_transition(x, v, sigma, sigma_next)
    assert euler.log_prob is None and euler.std.item() == 0 and euler.sample.dtype == dtype
    flow = flow_grpo_transition(x, v, sigma, sigma_next, sigma_1=SIGMA_1, noise_level=0.0, noise=z)
    dance = dance_grpo_transition(x, v, sigma, sigma_next, eta=0.0, noise=z)
    for step in (flow, dance):
        assert torch.equal(step.sample, euler.sample) and torch.equal(step.mean, euler.mean)
        assert step.log_prob is None and not step.std.any()
    close(euler.mean, x.double() + (sigma_next - sigma).double().reshape(-1, 1, 1, 1) * v.double())


def test_cps_at_noise_level_zero_is_the_deterministic_step():
    x, v, z = inputs(5)
    s, s2 = 0.8, 0.55
    step = cps_transition(x, v, s, s2, noise_level=0.0, noise=z)
    s_, s2_ = torch.tensor(s), torch.tensor(s2)  # float32, as the kernel computes
    deterministic = (1 - s2_) * (x - s_ * v) + s2_ * (x + (1 - s_) * v)
    assert torch.equal(step.mean, deterministic) and torch.equal(step.sample, deterministic)
    assert step.log_prob is None and step.std.item() == 0
    # ... which is the Euler step, algebraically: (1 - s') (x - s v) + s' (x + (1 - s) v) = x + (s' - s) v.
    torch.testing.assert_close(step.mean, euler_transition(x, v, s, s2).mean, rtol=1e-6, atol=1e-6)
    # The last step (s' = 0) lands on x0_hat and has no density either.
    last = cps_transition(x, v, 0.1, 0.0, noise=z)
    assert last.log_prob is None and torch.equal(last.sample, x - torch.tensor(0.1) * v)


def kernel_calls(dtype: torch.dtype):
    x, v, _ = (t.to(dtype) for t in inputs(6))
    sigma, sigma_next = torch.tensor([1.0, 0.8, 0.5, 0.2]), torch.tensor([SIGMA_1, 0.7, 0.3, 0.1])
    yield "flow_grpo", lambda **kw: flow_grpo_transition(x, v, sigma, sigma_next, sigma_1=SIGMA_1, **kw)
    yield "dance_grpo", lambda **kw: dance_grpo_transition(x, v, sigma, sigma_next, **kw)
    yield "cps", lambda **kw: cps_transition(x, v, sigma, sigma_next, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rescoring_a_sampled_action_reproduces_its_log_prob_bit_for_bit(dtype):
    z = inputs(7)[2]
    for name, call in kernel_calls(dtype):
        drawn = call(noise=z)
        assert drawn.sample.dtype == dtype, name
        rescored = call(prev_sample=drawn.sample)
        assert torch.equal(rescored.sample, drawn.sample), name
        assert torch.equal(rescored.log_prob, drawn.log_prob), name
        assert torch.isfinite(drawn.log_prob).all(), name


def test_on_policy_log_prob_averages_minus_half_minus_log_std():
    """E[log pi] = -1/2 - log std - log sqrt(2 pi) per element. 64 x 1024 = 65,536 draws: the standard
    error of the mean of -z^2/2 is 0.707 / 256 = 0.0028; the tolerance is about 5 of them."""
    generator = torch.Generator().manual_seed(8)
    shape = (64, 4, 16, 16)
    x, v, z = (torch.randn(shape, generator=generator) for _ in range(3))
    sigma = torch.linspace(1.0, 0.3, 64)
    sigma_next = sigma - 0.05
    steps = {
        "flow_grpo": flow_grpo_transition(x, v, sigma, sigma_next, sigma_1=SIGMA_1, noise=z),
        "dance_grpo": dance_grpo_transition(x, v, sigma, sigma_next, noise=z),
        "cps": cps_transition(x, v, sigma, sigma_next, noise=z),
    }
    for name, step in steps.items():
        expected = -0.5 - step.std.expand(64, 1, 1, 1).log().mean().item() - LOG_SQRT_2PI
        assert step.log_prob.mean().item() == pytest.approx(expected, abs=0.015), name


def test_the_first_step_from_pure_noise_is_finite():
    x, v, z = inputs(9)
    for step in (
        flow_grpo_transition(x, v, 1.0, SIGMA_1, sigma_1=SIGMA_1, noise=z),
        dance_grpo_transition(x, v, 1.0, SIGMA_1, noise=z),
        cps_transition(x, v, 1.0, SIGMA_1, noise=z),
    ):
        assert all(torch.isfinite(t).all() for t in (step.sample, step.mean, step.std, step.log_prob))
    g = flow_grpo_transition(x, v, 1.0, SIGMA_1, sigma_1=SIGMA_1, noise=z).std / math.sqrt(1 - SIGMA_1)
    assert g.item() == pytest.approx(0.7 * math.sqrt(1 / (1 - SIGMA_1)), rel=1e-6)


def gaussian_variance_error(kernel, delta: float, s: float = 0.6, c: float = 0.5) -> float:
    """One step on data x0 ~ N(0, c^2): x_s ~ N(0, m(s)) with m(s) = (1-s)^2 c^2 + s^2, and the exact
    velocity E[eps - x0 | x] = k x with k = (s - (1-s) c^2) / m(s). The step is linear, x' = K x + std z,
    so Var x' = K^2 m(s) + std^2; returns |Var x' - m(s + delta)|."""
    m = lambda t: (1 - t) ** 2 * c**2 + t**2
    k = (s - (1 - s) * c**2) / m(s)
    # The score identity the kernels rely on: -(x + (1 - s) v) / s is the exact score -x / m(s).
    assert -(1 + (1 - s) * k) / s == pytest.approx(-1 / m(s), rel=1e-12)
    one = torch.ones(1, 1)
    step = kernel(one, k * one, s, s + delta)
    return abs(step.mean.item() ** 2 * m(s) + step.std.item() ** 2 - m(s + delta))


def test_the_sde_step_keeps_the_flow_marginals_to_second_order():
    """The derivation check: halving the step quarters the one-step variance error of both SDE kernels
    (a first-order error would only halve it, as the g^2/s drift below does)."""
    z = torch.zeros(1, 1)
    kernels = {
        "flow_grpo": lambda x, v, s, s2: flow_grpo_transition(x, v, s, s2, sigma_1=SIGMA_1, noise=z),
        "dance_grpo": lambda x, v, s, s2: dance_grpo_transition(x, v, s, s2, eta=0.8, noise=z),
    }

    def wrong_drift(x, v, s, s2):
        g2 = 0.7**2 * s / (1 - s)
        return Transition(
            x, None, x + (v + g2 / s * (x + (1 - s) * v)) * (s2 - s), torch.tensor(math.sqrt(g2 * (s - s2)))
        )

    for name, kernel in {**kernels, "wrong": wrong_drift}.items():
        errors = [gaussian_variance_error(kernel, -d) for d in (0.04, 0.02, 0.01)]
        ratios = [errors[0] / errors[1], errors[1] / errors[2]]
        if name == "wrong":
            assert all(r < 2.5 for r in ratios), ratios
        else:
            assert all(3.5 < r < 4.5 for r in ratios), (name, errors, ratios)


def test_bad_arguments_are_refused_with_the_value():
    x, v, z = inputs(10)
    with pytest.raises(ValueError, match="either prev_sample"):
        cps_transition(x, v, 0.5, 0.4, noise=z, prev_sample=x)
    with pytest.raises(ValueError, match="sigma_next=0.6 must be below sigma=0.5"):
        dance_grpo_transition(x, v, 0.5, 0.6, noise=z)
    with pytest.raises(ValueError, match="noise_level=-0.1"):
        flow_grpo_transition(x, v, 0.5, 0.4, sigma_1=SIGMA_1, noise_level=-0.1, noise=z)
    with pytest.raises(ValueError, match="noise_level=1.5 must be a number in"):
        cps_transition(x, v, 0.5, 0.4, noise_level=1.5, noise=z)
    with pytest.raises(ValueError, match="sigma_1=1.0"):
        flow_grpo_transition(x, v, 1.0, 0.9, sigma_1=1.0, noise=z)


ALLOWED = {"__future__", "math", "numbers", "dataclasses", "typing", "torch"}


def test_the_kernels_import_nothing_of_the_training_loop():
    found = []
    for path in sorted(KERNELS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                if not (name.split(".")[0] in ALLOWED or name == "rlft.kernels" or name.startswith("rlft.kernels.")):
                    found.append(f"{path.name}:{node.lineno} {name}")
    assert not found, f"rlft/kernels/ may import only {sorted(ALLOWED)} and itself: {found}"
    assert len(list(KERNELS.glob("*.py"))) >= 7  # the scan saw the package

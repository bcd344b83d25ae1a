"""Algorithms across model families and kernels (rlft/families/, rlft/kernels/choice.py): one epoch of
every algorithm on SD3's flow SDE kernel, RWR on the flow-matching loss and on the deterministic
Euler kernel, GRPO on SD 1.x's DDIM kernel, one-line refusals of the pairs that make no sense, the
importance ratio exactly 1 before the first update on both families, and the flow family's
losses against hand computations."""

from __future__ import annotations

import csv
import math
import random

import pytest
import torch
from hydra.utils import instantiate

from rlft.algorithms import GRPO
from rlft.algorithms.grpo import gaussian_kl
from rlft.errors import ConfigError
from rlft.families.sd3 import SD3Policy, build_tiny_sd3
from rlft.kernels import DanceGRPOKernel, FlowGRPOKernel
from rlft.policy import policy_class
from rlft.prompts import FromFile
from rlft.rewards import Brightness, RewardRunner
from rlft.sampler import rollout
from rlft.streams import RandomStream
from rlft.train import build_module, family_options, train
from rlft.trajectories import rescore, training_batches, transition_of
from tests.conftest import FAST, compose_config

# 4 images of one prompt per epoch (tiny_sd3's groups of 4), 3 steps, one optimizer step.
FLOW = ["model=tiny_sd3", *FAST, "reward=brightness"]


def run(tmp_path, *overrides: str, name: str = "run") -> dict[str, float]:
    return train(compose_config([*FLOW, *overrides, f"output_root={tmp_path}"]), tmp_path / name)


@pytest.mark.parametrize(
    "algorithm",
    [
        ["algorithm=ddpo"],
        ["algorithm=ddpo_sf"],
        ["algorithm=tdpo"],
        ["algorithm=tdpo_r", "algorithm.neuron_reset_freq=1"],  # its critic's neurons reset after the epoch
        ["algorithm=rwr"],
        ["algorithm=rwr", "kernel=euler"],  # RWR needs no log-prob: the pipelines' own ODE sampler will do
        ["algorithm=grpo", "kernel=dance_grpo", "algorithm.kl_beta=0.04", "algorithm.kl_scaling=flow_grpo"],
    ],
    ids=["ddpo", "ddpo_sf", "tdpo", "tdpo_r", "rwr", "rwr-euler", "grpo-dance-kl"],
)
def test_one_epoch_of_each_algorithm_on_the_flow_family(tmp_path, algorithm):
    metrics = run(tmp_path, *algorithm)
    assert metrics["optimizer_steps"] >= 1 and math.isfinite(metrics["loss"]) and math.isfinite(metrics["reward_mean"])
    if "algorithm=grpo" in algorithm:
        assert metrics["kl"] >= 0 and 0 <= metrics["zero_std_ratio"] <= 1


def test_grpo_on_the_flow_family_resumes_exactly(tmp_path):
    args = ["algorithm=grpo", "algorithm.kl_beta=0.1", "sample.num_batches_per_epoch=4", "train.batch_size=4"]
    straight = run(tmp_path, *args, "epochs=2", name="straight")
    first = run(tmp_path, *args, name="resumed")
    assert first["optimizer_steps"] == 2  # 8 samples, minibatches of 4: the ratio is measured after the first
    resumed = train(
        compose_config([*FLOW, *args, "epochs=2", f"output_root={tmp_path}", f"resume={tmp_path / 'resumed'}"]),
        tmp_path / "other",
    )
    with (tmp_path / "resumed" / "metrics.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    compared = ["reward_mean", "loss", "kl", "approx_kl", "clipfrac", "ratio", "zero_std_ratio"]
    assert {k: resumed[k] for k in compared} == {k: straight[k] for k in compared}


def test_grpo_on_sd1s_ddim_kernel(tmp_path):
    args = [*FAST, "algorithm=grpo", "sample.images_per_prompt=2", "reward=brightness", f"output_root={tmp_path}"]
    metrics = train(compose_config(args), tmp_path / "run")
    assert metrics["optimizer_steps"] >= 1 and math.isfinite(metrics["loss"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model=tiny", "kernel=flow_grpo"], r"^sample\.kernel=FlowGRPOKernel: Stable Diffusion 1\.x steps with a ddim kernel: kernel=ddim"),
        (["model=tiny_sd3", "kernel=ddim"], r"^sample\.kernel=DDIMKernel: SD3 steps with a flow kernel: kernel=flow_grpo or kernel=dance_grpo"),
        (["model=tiny_sd3", "algorithm=ddpo", "kernel=euler"], r"^sample\.kernel=EulerKernel\(\): DDPO trains on the log-probs .* or algorithm=rwr"),
        (["model=tiny", "sample.kernel.eta=0"], r"^sample\.kernel=DDIMKernel\(eta=0\): DDPO trains on the log-probs"),
        (["model=tiny_sd3", "algorithm=tdpo", "sample.kernel.noise_level=0"], r"^sample\.kernel=FlowGRPOKernel\(noise_level=0\): TDPO trains"),
        (
            ["model=tiny", "algorithm=grpo", "sample.images_per_prompt=2", "algorithm.kl_scaling=flow_grpo"],
            r"^algorithm\.kl_scaling=flow_grpo: Flow-GRPO's KL scaling is defined for flow kernels",
        ),
        (["model=tiny_sd3", "algorithm=grpo", "algorithm.kl_scaling=sum"], r"^algorithm\.kl_scaling='sum' must be one of exact, flow_grpo"),
    ],
    ids=["sd1-flow", "sd3-ddim", "ddpo-euler", "ddpo-eta0", "tdpo-level0", "kl-scaling-ddim", "kl-scaling-name"],
)  # fmt: skip
def test_pairs_that_make_no_sense_are_refused_in_one_line_before_the_weights_load(tmp_path, overrides, message):
    cfg = compose_config([*FAST, *overrides])
    with pytest.raises(ConfigError, match=message) as raised:
        build_module(cfg, tmp_path)
    assert "\n" not in str(raised.value)


def sd3_policy(**options) -> SD3Policy:
    cfg = compose_config(["model=tiny_sd3"])
    return policy_class(cfg.model)(instantiate(cfg.model.components), lora=cfg.model.lora, **family_options(cfg.model), **options)


def flow_trajectories(policy, guidance: float = 1.0, steps: int = 3):
    runner = RewardRunner({"train": Brightness()})
    trajectories = rollout(
        policy, FromFile("simple_animals.txt"), runner, batch_size=4, num_batches=2, num_steps=steps,
        guidance_scale=guidance, stream=RandomStream(0), rng=random.Random(0),
        images_per_prompt=4,
    )  # fmt: skip
    runner.collect()
    runner.close()
    trajectories.advantages = torch.randn(len(trajectories))
    return trajectories


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_importance_ratio_is_exactly_one_before_the_first_update_on_the_flow_family(guidance):
    policy = sd3_policy(keep_reference=True)
    trajectories = flow_trajectories(policy, guidance)
    assert trajectories.schedule.shape == (8, 4) and trajectories.schedule[0, 0] == 1 and trajectories.schedule[0, -1] == 0
    assert torch.isfinite(trajectories.log_probs).all()
    # shuffled minibatches of the sampling batch's size: other samples beside each one than at sampling, time
    # permuted per sample, the same shapes, so the same bits
    for batch in training_batches(trajectories, 4, 3, RandomStream(1)):
        for j in range(3):
            step = batch.column(j)
            with torch.no_grad():
                assert torch.equal(rescore(policy, step, guidance), step.log_probs)
                assert torch.equal(transition_of(policy, step, guidance, reference=True).log_prob, step.log_probs)
    # Minibatches of another size: which matrix-product kernel the CPU takes depends on the number of rows
    # (a CI machine's differed from ours in the last bit for 3 rows against 4), so the ratio is 1 to float32's
    # rounding there, far inside PPO's clip range of 1e-4.
    for batch in training_batches(trajectories, 3, 3, RandomStream(1)):
        step = batch.column(0)
        with torch.no_grad():
            ratio = torch.exp(rescore(policy, step, guidance) - step.log_probs)
            torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)


def test_flow_grpo_kl_scaling_is_the_exact_kl_times_the_step_length():
    policy = sd3_policy()
    step = training_batches(flow_trajectories(policy), 8, 3, RandomStream(2))[0].column(1)
    with torch.no_grad():
        for name, param in policy.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        current = transition_of(policy, step, 1.0)
        reference = transition_of(policy, step, 1.0, reference=True)
    learner = type("Learner", (), {"policy": policy})()
    _, exact = GRPO(kl_beta=1.0).step_loss(learner, step, 1.0)
    _, scaled = GRPO(kl_beta=1.0, kl_scaling="flow_grpo").step_loss(learner, step, 1.0)
    # float64, from the two steps' Gaussians: KL = ||mu - mu_ref||^2 / (2 std^2) per element, averaged
    mean, mean_ref, std = current.mean.double(), reference.mean.double(), current.std.double()
    per_sample = ((mean - mean_ref) ** 2 / (2 * std**2)).flatten(1).mean(1)
    rows = torch.arange(len(step.step_index))
    length = (step.schedule[rows, step.step_index] - step.schedule[rows, step.step_index + 1]).double()
    assert per_sample.min() > 0 and length.unique().numel() > 1  # rows at different steps
    torch.testing.assert_close(exact["kl"].double(), per_sample.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(scaled["kl"].double(), (per_sample * length).mean(), rtol=1e-6, atol=0)
    # which is Flow-GRPO's ||mu - mu_ref||^2 / (2 g^2) with its g = a sqrt(s / (1 - s)) (s = 1: 1 - s_1)
    s = step.schedule[rows, step.step_index].double()
    one_minus = torch.where(s == 1, 1 - step.schedule[rows, 1].double(), 1 - s)
    g = 0.7 * (s / one_minus).sqrt()
    theirs = ((mean - mean_ref) ** 2).flatten(1).mean(1) / (2 * g**2)
    torch.testing.assert_close(scaled["kl"].double(), theirs.mean(), rtol=1e-5, atol=0)
    assert torch.equal(gaussian_kl(current.mean, reference.mean, current.std).mean(), exact["kl"])


def test_the_flow_matching_loss_matches_a_hand_computation():
    policy = SD3Policy(build_tiny_sd3(seed=0, sample_size=8), max_sequence_length=4)
    latents = torch.randn(3, *policy.latent_shape, generator=torch.Generator().manual_seed(5))
    cond = policy.encode_prompts(["a cat", "a dog", "a fox"])
    loss = policy.denoising_loss(latents, cond, 1.0, RandomStream(3), (0.0, 0.4))

    generator = torch.Generator().manual_seed(3)  # RandomStream(3)'s draws, by hand
    t = torch.randint(600, 1000, (3,), generator=generator)  # the first 40% of the chain: the noisiest t
    noise = torch.randn(latents.shape, generator=generator)
    u = (t.double() + 1) / 1000
    sigma = 3 * u / (1 + 2 * u)  # SD3's shift 3
    assert sigma.min() > 0.8
    s = sigma.reshape(3, 1, 1, 1)
    noisy = (1 - s) * latents.double() + s * noise.double()
    with torch.no_grad():
        velocity = policy.transformer(
            hidden_states=noisy.float(), timestep=(sigma * 1000).float(), encoder_hidden_states=cond.hidden_states,
            pooled_projections=cond.pooled, return_dict=False,
        )[0]  # fmt: skip
    expected = ((velocity.double() - (noise.double() - latents.double())) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)


def test_kernels_are_config_choices_with_their_parameters():
    cfg = compose_config(["model=tiny_sd3", "kernel=dance_grpo", "sample.kernel.eta=0.5"])
    assert instantiate(cfg.sample.kernel) == DanceGRPOKernel(eta=0.5)
    assert instantiate(compose_config(["model=tiny_sd3"]).sample.kernel) == FlowGRPOKernel(noise_level=0.7)
    assert compose_config(["model=tiny"]).sample.kernel.eta == 1.0
    with pytest.raises(ValueError, match=r"sample\.kernel\.noise_level=-1 must be a number >= 0"):
        FlowGRPOKernel(noise_level=-1)


def test_the_moved_eta_key_names_its_new_place():
    from rlft.__main__ import check_moved_keys

    check_moved_keys(["sample.kernel.eta=0.5", "model=tiny"])
    with pytest.raises(ConfigError, match=r"^sample\.eta=0\.5: sample\.eta is now sample\.kernel\.eta .*: give sample\.kernel\.eta=0\.5$"):
        check_moved_keys(["model=tiny", "sample.eta=0.5"])


def test_the_cps_kernels_deterministic_last_step_is_kept_out_of_training():
    from rlft.train import validate

    validate(compose_config(["model=tiny_sd3", "kernel=cps", "algorithm=grpo"]))  # tiny_sd3 trains steps 0..4 of 6
    validate(compose_config(["model=tiny_sd3", "kernel=cps", "algorithm=rwr", "train.timestep_window=[0,1]"]))
    with pytest.raises(ConfigError, match=r"^train\.timestep_window=\[0, 1\] trains the CPS kernel's last step.*\[0, 0\.833\]$"):
        validate(compose_config(["model=tiny_sd3", "kernel=cps", "algorithm=grpo", "train.timestep_window=[0,1]"]))


def test_a_policy_option_the_family_does_not_take_is_one_line(tmp_path):
    assert family_options(compose_config(["model=tiny_sd3"]).model) == {"max_sequence_length": 8}
    with pytest.raises(ConfigError, match=r"^model\.policy\.t5_length=8: SD3Policy has no option t5_length; its own options: max_sequence_length, resolution$"):
        build_module(compose_config([*FLOW, "+model.policy.t5_length=8"]), tmp_path)
    with pytest.raises(ConfigError, match=r"^model\.policy\.resolution=64: SD1Policy has no option resolution; its own options: none$"):
        family_options(compose_config(["model=tiny", "+model.policy.resolution=64"]).model)

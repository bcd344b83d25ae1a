"""GRPO on the DDIM kernel (docs/algorithms.md#grpo): group advantages, dropped zero-signal samples,
the closed-form KL, one-initial-noise groups, and a run that trains and resumes exactly."""

import csv
import math
import random

import numpy as np
import pytest
import torch

from rlft.algorithms import GRPO
from rlft.algorithms.base import EpochSamples
from rlft.algorithms.grpo import gaussian_kl, group_advantages, training_rows
from rlft.prompts import FromFile
from rlft.rewards import Brightness, RewardRunner
from rlft.sampler import rollout
from rlft.streams import RandomStream
from rlft.trajectories import training_batches
from tests.conftest import FAST, compose_config
from tests.test_policy import make_policy

PROMPTS = ["cat", "cat", "cat", "dog", "dog", "dog", "fox", "fox", "fox"]
REWARDS = [1.0, 2.0, 4.0, 0.1, 0.1, 0.1, -3.0, 0.0, 3.0]  # dog: equal rewards (their float mean is not 0.1)


def by_hand(rewards: list[float], scale: float | None, clip: float) -> list[float]:
    """One group's advantages in float64, written out: (r - mean) / (std + 1e-4), population std."""
    mean = math.fsum(rewards) / len(rewards)
    std = math.sqrt(math.fsum((r - mean) ** 2 for r in rewards) / len(rewards)) if scale is None else scale
    return [max(-clip, min(clip, (r - mean) / (std + 1e-4))) for r in rewards]


@pytest.mark.parametrize("global_std", [False, True])
def test_group_advantages_match_a_float64_hand_computation(global_std):
    everything = math.sqrt(np.var(np.array(REWARDS, dtype=np.float64)))
    scale = everything if global_std else None
    advantages, groups, zero = group_advantages(PROMPTS, np.array(REWARDS), global_std, adv_clip_max=1.2)
    expected = [*by_hand(REWARDS[:3], scale, 1.2), 0.0, 0.0, 0.0, *by_hand(REWARDS[6:], scale, 1.2)]
    np.testing.assert_allclose(advantages, expected, rtol=1e-12, atol=0)
    assert (groups, zero) == (3, 1)
    assert np.abs(advantages).max() == 1.2  # fox's +-1.2247 with its own std is clipped
    assert advantages[3:6].tolist() == [0.0, 0.0, 0.0]  # exactly 0, not a rounding error / 1e-4
    # eps: two rewards 1e-4 apart get +-0.5e-4 / (0.5e-4 + 1e-4) = +-1/3, not +-1
    tight, _, _ = group_advantages(["a", "a"], np.array([0.0, 1e-4]))
    np.testing.assert_allclose(tight, [-1 / 3, 1 / 3], rtol=1e-9)


def test_epochs_share_no_statistics_and_zero_std_groups_are_counted_exactly():
    algorithm = GRPO()
    first = EpochSamples(rewards=torch.tensor(REWARDS), prompts=PROMPTS)
    second = EpochSamples(rewards=torch.tensor([5.0, 6.0, 7.0, 7.0, 8.0, 8.0]), prompts=["cat"] * 2 + ["fox"] * 4)
    algorithm.advantages(first)
    targets = algorithm.advantages(second)
    torch.testing.assert_close(targets.advantages, GRPO().advantages(second).advantages, rtol=0, atol=0)
    assert targets.advantages[:2].tolist() == pytest.approx([-5000 / 5001, 5000 / 5001])  # cat: this epoch's only
    assert algorithm.state_dict() == {}
    metrics = algorithm.advantages(first).metrics
    # dog's three, and fox's 0.0 (its group's mean): a zero advantage is dropped too
    assert metrics == {"zero_std_ratio": 1 / 3, "kept_fraction": 5 / 9}


def test_training_rows_keep_the_nonzero_advantages_and_top_up_whole_minibatches():
    advantages = torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 1.0, -1.0])
    assert training_rows(advantages, 2, 4, RandomStream(0)).tolist() == [0, 2, 6, 7]  # exactly the kept ones
    for most, size in [(3, 4), (5, 6)]:  # 3 on this process, or another rank kept 5
        rows = training_rows(advantages, 2, max(most, 4), RandomStream(0)).tolist()
        assert rows[:4] == [0, 2, 6, 7] and len(rows) == max(size, 4) and len(set(rows)) == len(rows)
        assert all(advantages[r] == 0 for r in rows[4:])
    assert training_rows(torch.tensor([0.0, 1.0, 0.0, 0.0]), 2, 1, RandomStream(0)).tolist()[0] == 1


def test_gaussian_kl_is_the_closed_form_and_zero_for_the_same_mean():
    generator = torch.Generator().manual_seed(0)
    mean, reference = torch.randn(3, 4, 5, 5, generator=generator), torch.randn(3, 4, 5, 5, generator=generator)
    std = torch.rand(3, 1, 1, 1, generator=generator) + 0.1
    m1, m2, s = mean.double(), reference.double(), std.double().expand_as(mean)
    # the general KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2, s1 = s2
    general = torch.log(s / s) + (s**2 + (m1 - m2) ** 2) / (2 * s**2) - 0.5
    torch.testing.assert_close(
        gaussian_kl(mean, reference, std).double(), general.mean(dim=(1, 2, 3)), rtol=1e-6, atol=0
    )
    assert gaussian_kl(mean, mean, std).tolist() == [0.0, 0.0, 0.0]


class Learner:
    """What GRPO's step loss reads of the learner: the policy (the RL module is the real one in the
    run below)."""

    def __init__(self, policy):
        self.policy = policy


def sample(policy, images_per_prompt: int = 1, same_noise: bool = False, batch_size: int = 3):
    runner = RewardRunner({"train": Brightness()})
    trajectories = rollout(
        policy,
        FromFile("simple_animals.txt"),
        runner,
        batch_size=batch_size,
        num_batches=2,
        num_steps=4,
        guidance_scale=5.0,
        stream=RandomStream(0),
        rng=random.Random(0),
        images_per_prompt=images_per_prompt,
        same_noise_per_group=same_noise,
    )
    runner.collect()
    runner.close()
    trajectories.advantages = torch.randn(len(trajectories))
    return trajectories


def test_kl_step_loss_is_zero_and_ratio_one_before_an_update_then_the_closed_form():
    policy = make_policy("tiny_lora")
    grpo = GRPO(kl_beta=0.5)
    step = training_batches(sample(policy), 3, 2, RandomStream(1))[0].column(0)
    loss, info = grpo.step_loss(Learner(policy), step, 5.0)
    assert info["kl"].item() == 0.0 and loss.item() == info["policy_loss"].item()  # the LoRA starts as the base
    torch.testing.assert_close(info["ratio"], torch.tensor(1.0), rtol=0, atol=1e-5)
    loss.backward()  # the KL term's graph is whole
    with torch.no_grad():
        for name, param in policy.unet.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    _, info = grpo.step_loss(Learner(policy), step, 5.0)
    with torch.no_grad():
        means = [
            policy.transition(
                step.latents,
                step.step_index,
                step.schedule,
                step.prompt_embeds,
                5.0,
                next_latents=step.next_latents,
                reference=reference,
            )
            for reference in (False, True)
        ]
    m1, m2, s = means[0].mean.double(), means[1].mean.double(), means[0].std.double()
    expected = ((m1 - m2) ** 2 / (2 * s**2)).mean(dim=(1, 2, 3)).mean()
    assert info["kl"].item() > 0
    torch.testing.assert_close(info["kl"].double(), expected, rtol=1e-5, atol=0)


def test_same_noise_per_group_shares_x_t_within_a_group_only():
    policy = make_policy("tiny")
    # groups of 2 in batches of 3: the second group spans the two batches
    shared = sample(policy, images_per_prompt=2, same_noise=True).chain[:, 0]
    for group in range(3):
        assert torch.equal(shared[2 * group], shared[2 * group + 1])
    firsts = shared[::2].flatten(1)
    assert torch.cdist(firsts, firsts).fill_diagonal_(1.0).min() > 0
    again = sample(policy, images_per_prompt=2, same_noise=True).chain[:, 0]
    assert torch.equal(shared, again)  # drawn from the NOISE stream: the same seed, the same x_T
    separate = sample(policy, images_per_prompt=2).chain[:, 0].flatten(1)
    assert torch.cdist(separate, separate).fill_diagonal_(1.0).min() > 0


def test_one_epoch_of_grpo_trains_and_resumes_exactly(tmp_path):
    from rlft.train import train

    args = [*FAST, "algorithm=grpo", "sample.images_per_prompt=2", "algorithm.kl_beta=0.1", "reward=brightness"]
    straight = train(compose_config([*args, "epochs=2", f"output_root={tmp_path}"]), tmp_path / "straight")
    first = train(compose_config([*args, f"output_root={tmp_path}"]), tmp_path / "resumed")
    assert first["optimizer_steps"] >= 1 and first["kl"] >= 0 and 0 <= first["zero_std_ratio"] <= 1
    assert first["kept_fraction"] == 1.0 - first["zero_std_ratio"]  # groups of 2: a zero std drops both
    resumed = train(
        compose_config([*args, "epochs=2", f"output_root={tmp_path}", f"resume={tmp_path / 'resumed'}"]),
        tmp_path / "other",
    )
    assert not (tmp_path / "other").exists()  # continued the first run in its own directory
    with (tmp_path / "resumed" / "metrics.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    compared = ["reward_mean", "loss", "kl", "approx_kl", "clipfrac", "ratio", "zero_std_ratio"]
    assert {k: resumed[k] for k in compared} == {k: straight[k] for k in compared}


@pytest.mark.slow
def test_grpo_raises_brightness_on_the_shipped_toy_flow_model(tmp_path):
    """Learning on the flow family: GRPO with Flow-GRPO's SDE kernel on the shipped toy flow base
    (model=toy_flow's defaults: 64 samples of 10 steps per epoch in groups of 8, LoRA r16), without
    guidance, the first half of each chain trained, rewarded by brightness (the mean pixel value, read
    exactly). Measured (seed 42, one torch thread, 25 s): reward_mean 0.52 at epoch 0, 0.61, 0.59, 0.61
    at epochs 7-9 (+0.08), after 0.52-0.55 over epochs 0-4, where little has moved yet. The margin
    is half the gain."""
    from rlft.train import train

    cfg = compose_config(
        ["~experiment", "reward=brightness", "sample.guidance_scale=1", "epochs=10", "geneval.per_kind=0",
         "train.learning_rate=2e-3", "train.timestep_window=[0.0,0.5]", f"output_root={tmp_path}"]
    )  # fmt: skip
    assert cfg.model.components._target_ == "rlft.toy.flow.load_toy_flow" and cfg.model.path is None
    train(cfg, tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rewards = [float(row["reward_mean"]) for row in csv.DictReader(f)]
    assert len(rewards) == 10 and sum(rewards[-3:]) / 3 > rewards[0] + 0.04, rewards


def test_an_epoch_without_an_optimizer_step_is_still_checkpointed(tmp_path):
    """GRPO skips the optimizer when every group scored its images alike; Lightning's checkpoint
    callback would then skip the epoch's save (the global step did not move), and last.ckpt would be
    written at the end of training an epoch ahead, so resume=auto took the run for finished."""
    from rlft.resume import read_checkpoint
    from rlft.train import train

    cfg = compose_config(
        ["~experiment", "epochs=1", "sample.num_steps=2", "sample.batch_size=4", "sample.num_batches_per_epoch=1",
         "sample.images_per_prompt=2", "geneval.per_kind=0", "train.batch_size=4", "train.gradient_accumulation_steps=1",
         f"output_root={tmp_path}"]
    )  # fmt: skip
    train(cfg, tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert float(row["zero_std_ratio"]) == 1.0 and float(row["optimizer_steps"]) == 0  # the case itself
    for name in ("epoch=0000.ckpt", "last.ckpt"):
        checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / name)
        assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 0), name

"""The policy: the first training pass after sampling reproduces the behaviour log-probs exactly."""

import random

import pytest
import torch
from hydra.utils import instantiate

from rlft.policy import Policy
from rlft.prompts import FromFile
from rlft.rewards import Brightness, RewardRunner
from rlft.sampler import rollout
from rlft.streams import RandomStream
from rlft.trajectories import rescore, training_batches
from tests.conftest import compose_config


def make_policy(model: str, frozen_dtype: str = "float32", **options) -> Policy:
    """The model's policy built offline; `options`: Policy's speed and memory switches."""
    cfg = compose_config([f"model={model}"])
    return Policy(instantiate(cfg.model.components), lora=cfg.model.lora, frozen_dtype=frozen_dtype, **options)


def sample(policy: Policy, steps: int = 4, batches: int = 2, trajectory_dtype: torch.dtype = torch.float32):
    runner = RewardRunner({"train": Brightness()})
    trajectories = rollout(
        policy,
        FromFile("simple_animals.txt"),
        runner,
        batch_size=3,
        num_batches=batches,
        num_steps=steps,
        guidance_scale=5.0,
        stream=RandomStream(0),
        rng=random.Random(0),
        trajectory_dtype=trajectory_dtype,
    )
    trajectories.rewards = runner.collect()["train"]
    trajectories.advantages = torch.randn(len(trajectories))
    runner.close()
    return trajectories


def assert_ratio_one(policy: Policy, trajectories, num_timesteps: int = 4, atol: float = 1e-5) -> None:
    """Re-scoring a shuffled training minibatch (other samples beside each one than at sampling,
    time permuted per sample) reproduces the behaviour log-probs: pi / pi_old = 1."""
    batch = training_batches(trajectories, 2, num_timesteps, RandomStream(1))[0]
    for j in range(num_timesteps):
        step = batch.column(j)
        ratio = torch.exp(rescore(policy, step, 5.0) - step.log_probs)  # what the training loops call
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=atol)


@pytest.mark.parametrize("model", ["tiny", "tiny_lora"])
def test_importance_ratio_is_one_before_the_first_update(model):
    policy = make_policy(model, keep_reference=True)
    trajectories = sample(policy)
    assert_ratio_one(policy, trajectories)
    # GRPO with its KL term re-scores through the kernel's mean and std itself (rlft/algorithms/grpo.py)
    from rlft.algorithms import GRPO

    learner = type("Learner", (), {"policy": policy})()
    for step in [training_batches(trajectories, 2, 4, RandomStream(1))[0].column(j) for j in range(4)]:
        _, info = GRPO(kl_beta=0.1).step_loss(learner, step, 5.0)
        torch.testing.assert_close(info["ratio"], torch.tensor(1.0), rtol=0, atol=1e-5)
        assert info["kl"].item() == 0.0  # the reference is the starting policy (a copy, or the LoRA's base)


def test_trajectory_shapes_and_chain():
    policy = make_policy("tiny")
    trajectories = sample(policy, steps=5, batches=2)
    assert trajectories.chain.shape == (6, 6, 4, 8, 8)
    assert trajectories.log_probs.shape == (6, 5)
    assert trajectories.schedule[0].tolist() == [801, 601, 401, 201, 1, -199]  # the last: the chain's end
    assert trajectories.images.shape == (6, 3, 32, 32)
    assert 0 <= trajectories.images.min() and trajectories.images.max() <= 1
    torch.testing.assert_close(trajectories.latents[:, 1:], trajectories.next_latents[:, :-1])


def test_training_batches_permute_time_jointly():
    policy = make_policy("tiny")
    trajectories = sample(policy, steps=4, batches=1)
    batches = training_batches(trajectories, batch_size=3, num_timesteps=2, stream=RandomStream(0))
    (batch,) = batches
    assert batch.step_indices.shape == (3, 2)
    for i in range(3):
        source = next(k for k in range(3) if torch.equal(trajectories.prompt_embeds[k], batch.prompt_embeds[i]))
        assert torch.equal(batch.schedule[i], trajectories.schedule[source])
        for j in range(2):
            column = batch.step_indices[i, j].item()
            torch.testing.assert_close(batch.latents[i, j], trajectories.latents[source, column])
            torch.testing.assert_close(batch.next_latents[i, j], trajectories.next_latents[source, column])
            assert batch.log_probs[i, j] == trajectories.log_probs[source, column]


def test_lora_starts_as_the_base_model_and_is_the_only_trainable_part():
    base, adapted = make_policy("tiny"), make_policy("tiny_lora")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    embeds = base.encode_prompts(["a cat", "a dog"])
    with torch.no_grad():
        torch.testing.assert_close(adapted.predict_noise(x, t, embeds, 5.0), base.predict_noise(x, t, embeds, 5.0))
    names = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all(any(m in n for m in ("to_q", "to_k", "to_v", "to_out.0")) for n in names)
    assert all(p.requires_grad for p in base.unet.parameters())  # model=tiny: full fine-tuning


def test_frozen_weights_in_half_precision_trainable_in_float32():
    policy = make_policy("tiny_lora", frozen_dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    frozen = [p for p in policy.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert policy.vae.dtype == torch.bfloat16 and policy.text_encoder.dtype == torch.bfloat16
    trajectories = sample(policy, steps=2, batches=1)
    assert torch.isfinite(trajectories.log_probs).all()


def test_images_per_prompt_draws_groups_and_keeps_the_single_draw_sequence():
    from rlft.errors import ConfigError
    from rlft.sampler import draw_prompts
    from rlft.toy.prompts import ToyPrompts

    source = ToyPrompts()
    grouped = draw_prompts(source, random.Random(0), 12, 4)
    firsts = [source.sample(rng) for rng in [random.Random(0)] for _ in range(3)]
    assert grouped == [pair for pair in firsts for _ in range(4)]
    assert grouped[0][1] is not grouped[1][1]  # each sample owns its metadata
    rng = random.Random(0)
    assert draw_prompts(source, random.Random(0), 6, 1) == [source.sample(rng) for _ in range(6)]
    with pytest.raises(ConfigError, match="images_per_prompt=4"):
        draw_prompts(source, random.Random(0), 10, 4)

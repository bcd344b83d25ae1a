"""Speed and memory switches (`perf.*`, train.timestep_fraction): each keeps sampling and training
on one code path, so the importance ratio is exactly 1 before the first update."""

import pytest
import torch

from rlft.streams import RandomStream
from rlft.trajectories import training_batches
from tests.test_policy import assert_ratio_one, make_policy, sample


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_trajectories_score_the_stored_values(dtype):
    policy = make_policy("tiny")
    trajectories = sample(policy, trajectory_dtype=dtype)
    assert trajectories.chain.dtype == dtype  # half the memory of float32
    assert_ratio_one(policy, trajectories)  # the log-prob was computed on the rounded action


@pytest.mark.parametrize("model", ["tiny", "tiny_lora"])
def test_channels_last(model):
    policy = make_policy(model, channels_last=True)
    conv = policy.unet.conv_in.weight  # (LoRA adapts attention layers; conv_in stays a plain Conv2d)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert_ratio_one(policy, sample(policy))


def test_gradient_checkpointing_keeps_fewer_activations_and_the_same_gradients():
    torch.manual_seed(0)
    plain, checkpointed = make_policy("tiny"), make_policy("tiny", gradient_checkpointing=True)
    checkpointed.unet.load_state_dict(plain.unet.state_dict())
    latents = torch.randn(2, *plain.latent_shape)
    timesteps = torch.tensor([500, 300])
    embeds = plain.encode_prompts(["a cat", "a dog"])
    saved, grads = [], []
    for policy in (plain, checkpointed):
        kept = [0]

        def pack(tensor, kept=kept):  # activations autograd keeps for backward (outside checkpoints)
            kept[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = policy.predict_noise(latents, timesteps, embeds, 5.0).square().mean()
        loss.backward()
        saved.append(kept[0])
        grads.append({n: p.grad for n, p in policy.unet.named_parameters() if p.grad is not None})
    assert saved[1] < 0.6 * saved[0], saved
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
    assert_ratio_one(checkpointed, sample(checkpointed))


def test_compiled_unet_keeps_the_ratio_at_one_and_its_key_names():
    policy = make_policy("tiny", compile_unet={"backend": "aot_eager"})
    assert all("_orig_mod" not in key for key in policy.unet.state_dict())  # checkpoints unchanged
    assert_ratio_one(policy, sample(policy))


def test_timestep_fraction_trains_on_fewer_columns():
    policy = make_policy("tiny")
    trajectories = sample(policy, steps=4)
    batch = training_batches(trajectories, 2, 2, RandomStream(1))[0]
    assert batch.latents.shape[1] == 2
    assert_ratio_one(policy, trajectories, num_timesteps=2)


def test_timestep_window_trains_only_its_part_of_the_chain():
    from rlft.trajectories import trained_steps

    assert trained_steps(10, 1.0, (0.0, 0.3)) == (range(3), 3)
    assert trained_steps(10, 0.5, (0.5, 1.0)) == (range(5, 10), 2)
    assert trained_steps(4, 1.0, (0.0, 0.1)) == (range(1), 1)  # never empty
    assert trained_steps(10, 1.0, (0.96, 1.0)) == (range(9, 10), 1)  # never past the last step
    policy = make_policy("tiny")
    trajectories = sample(policy, steps=4)
    steps, num_timesteps = trained_steps(4, 1.0, (0.5, 1.0))
    batch = training_batches(trajectories, 2, num_timesteps, RandomStream(1), steps)[0]
    assert set(batch.step_indices.flatten().tolist()) <= {2, 3}
    assert set(batch.step_indices[0].tolist()) == {2, 3}


def test_a_run_with_every_switch_on(tmp_path):
    from tests.conftest import FAST, run_cli

    switches = [
        "perf.compile={backend:aot_eager}",
        "perf.channels_last=true",
        "perf.gradient_checkpointing=true",
        "perf.trajectory_dtype=bfloat16",
        "train.timestep_fraction=0.5",
        "train.timestep_window=[0.0,0.5]",
        "sample.images_per_prompt=2",
    ]
    result = run_cli([*FAST, *switches, f"output_root={tmp_path}"], cwd=tmp_path)
    assert result.stdout.count("reward_mean=") == 1


def test_unknown_trajectory_dtype_is_one_clear_error(tmp_path):
    from tests.conftest import FAST, run_cli

    result = run_cli([*FAST, "perf.trajectory_dtype=int8", f"output_root={tmp_path}"], cwd=tmp_path, check=False)
    assert result.returncode == 2 and "perf.trajectory_dtype=int8 must be one of float32, bfloat16, float16" in result.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_keeps_trainable_weights_in_fp32_and_the_ratio_at_one(dtype):
    """hardware.precision=bf16-mixed / 16-mixed: Lightning runs the whole RL epoch (sampling and
    training) under autocast; the DDIM step and its log-prob stay float32."""
    policy = make_policy("tiny_lora")
    with torch.autocast("cpu", dtype=dtype):
        trajectories = sample(policy)
        assert trajectories.log_probs.dtype == torch.float32
        assert_ratio_one(policy, trajectories)
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())

"""The Flow-GRPO presets (conf/experiment/flow_grpo_*.yaml): they compose to the reference's settings,
stop in one line when the weights are not here, and SD3 samples at the resolution they set
(model.policy.resolution, rlft/families/sd3.py), as diffusers' pipeline does at that size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlft.errors import ConfigError
from rlft.export import RunRecord, model_card
from rlft.families.sd3 import SD3Policy, build_tiny_sd3, sd3_pipeline
from rlft.trajectories import trained_steps
from tests.conftest import compose_config, run_cli


def optimizer_steps_per_epoch(cfg) -> int:
    s, t = cfg.sample, cfg.train
    return (s.batch_size * s.num_batches_per_epoch) // (t.batch_size * t.gradient_accumulation_steps)


def test_flow_grpo_pickscore_has_the_references_settings():
    cfg = compose_config(["experiment=flow_grpo_pickscore"])
    assert cfg.model.components._target_ == "rlft.families.sd3.load_sd3"
    assert cfg.model.components.hub_id == "stabilityai/stable-diffusion-3.5-medium" and cfg.model.components.t5
    assert (cfg.model.policy.resolution, cfg.model.policy.max_sequence_length) == (512, 128)
    assert (cfg.model.lora.r, cfg.model.lora.lora_alpha, cfg.model.lora.init_lora_weights) == (32, 64, "gaussian")
    assert cfg.reward._target_ == "rlft.rewards.PickScore" and cfg.algorithm._target_ == "rlft.algorithms.GRPO"
    s, t, a = cfg.sample, cfg.train, cfg.algorithm
    assert (s.kernel._target_, s.kernel.noise_level) == ("rlft.kernels.FlowGRPOKernel", 0.7)
    assert (s.num_steps, s.guidance_scale, t.cfg, s.images_per_prompt, s.same_noise_per_group) == (
        10,
        4.5,
        True,
        24,
        False,
    )
    assert trained_steps(s.num_steps, t.timestep_fraction, tuple(t.timestep_window)) == (range(9), 9)
    assert (a.kl_beta, a.kl_scaling, a.clip_range, a.adv_clip_max, a.global_std) == (0.01, "flow_grpo", 1e-4, 5.0, True)
    assert (t.learning_rate, t.adam_beta1, t.adam_beta2, t.max_grad_norm) == (3e-4, 0.9, 0.999, 1.0)
    # batches of 9, as the reference's, 3 whole groups per GPU, 2 optimizer steps per epoch
    assert (s.batch_size, t.batch_size) == (9, 9) and (s.batch_size * s.num_batches_per_epoch) % 24 == 0
    assert optimizer_steps_per_epoch(cfg) == 2
    assert (cfg.hardware.accelerator, cfg.hardware.precision) == ("gpu", "bf16-mixed")


def test_flow_grpo_pickscore_nocfg_is_the_references_faster_recipe():
    cfg = compose_config(["experiment=flow_grpo_pickscore_nocfg"])
    s, t, a = cfg.sample, cfg.train, cfg.algorithm
    assert (s.guidance_scale, t.cfg, s.images_per_prompt, s.num_steps) == (1.0, False, 18, 10)
    assert (s.kernel._target_, s.kernel.noise_level) == ("rlft.kernels.CPSKernel", 0.8)
    assert (a.clip_range, a.kl_beta, a.global_std, a.adv_clip_max) == (1e-5, 0.0, True, 5.0)
    assert trained_steps(s.num_steps, t.timestep_fraction, tuple(t.timestep_window)) == (range(5), 3)
    # the reference's per-GPU epoch exactly: 4 batches of 9 = 2 groups of 18, 2 optimizer steps
    assert (s.batch_size, s.num_batches_per_epoch, t.batch_size) == (9, 4, 9) and optimizer_steps_per_epoch(cfg) == 2
    assert (cfg.model.policy.resolution, cfg.reward._target_, t.learning_rate) == (512, "rlft.rewards.PickScore", 3e-4)


def test_without_weights_the_preset_stops_in_one_line(tmp_path):
    """The reward is built first: its line names reward.model.path and the download; with a reward
    that is here (the tiny PickScore), the model's line names model.path (in-process, cheaper)."""
    result = run_cli(
        ["experiment=flow_grpo_pickscore", "hardware=cpu", f"output_root={tmp_path}"], cwd=tmp_path, check=False
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("rlft: error: ")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])  # the last thing printed
    assert (
        errors[0].startswith("rlft: error: reward.model.path=null: ")
        and "hf download yuvalkirstain/PickScore_v1" in errors[0]
    )

    from rlft.train import build_module

    cfg = compose_config(["experiment=flow_grpo_pickscore", "hardware=cpu", "reward=pickscore_tiny"])
    with pytest.raises(ConfigError) as stop:
        build_module(cfg, tmp_path / "run")
    message = str(stop.value)
    assert "\n" not in message and message.startswith("model.path=null: ")
    assert "stabilityai/stable-diffusion-3.5-medium" in message and "model.path=/path/to/it" in message


@pytest.mark.parametrize("preset,guidance", [("flow_grpo_pickscore", 4.5), ("flow_grpo_pickscore_nocfg", 1.0)])
def test_the_presets_model_card_samples_as_the_run_trained(tmp_path, preset, guidance):
    cfg = compose_config([f"experiment={preset}", "model.path=/data/sd3.5-medium"])
    record = RunRecord(config=OmegaConf.to_container(cfg, resolve=True), epochs_trained=1)
    card = model_card(record, tmp_path, "/data/sd3.5-medium")
    assert 'pipe = StableDiffusion3Pipeline.from_pretrained("stabilityai/stable-diffusion-3.5-medium")' in card
    assert f"height=512, width=512, max_sequence_length=128, guidance_scale={guidance}).images[0]" in card


def test_sd3_samples_at_the_resolution_given_as_the_pipeline_does():
    components = build_tiny_sd3(seed=0, sample_size=16)
    assert SD3Policy(components, lora=None).latent_shape == (4, 16, 16)  # none given: the model's own size
    policy = SD3Policy(components, lora=None, resolution=8)
    assert policy.latent_shape == (4, 8, 8)
    cond = policy.encode_prompts(["a red cube", "two blue spheres"])
    x = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    steps, guidance = 2, 4.5
    negative = policy.negative_conditioning.expand(2)
    expected = sd3_pipeline(policy)(
        prompt_embeds=cond.hidden_states,
        pooled_prompt_embeds=cond.pooled,
        negative_prompt_embeds=negative.hidden_states,
        negative_pooled_prompt_embeds=negative.pooled,
        latents=x,
        height=8,
        width=8,
        num_inference_steps=steps,
        guidance_scale=guidance,
        output_type="latent",
    ).images
    sigmas, latents = policy.sigmas(steps), x
    with torch.no_grad():
        for i in range(steps):
            latents = policy.ode_step(latents, i, sigmas, cond, guidance).sample
    assert torch.equal(latents, expected)
    assert policy.decode(latents).shape == (2, 3, 8, 8)
    for bad in (0, 8.5, 100):  # not a positive multiple of patch x VAE downscale (1 x 1 here), or past 96 patches
        with pytest.raises(
            ConfigError, match=rf"^model\.policy\.resolution={bad}: give a multiple of 1 .*up to 96 pixels"
        ):
            SD3Policy(components, lora=None, resolution=bad)


def test_the_preset_files_state_their_sources():
    for name in ("flow_grpo_pickscore", "flow_grpo_pickscore_nocfg"):
        text = (Path(__file__).parents[1] / "conf" / "experiment" / f"{name}.yaml").read_text()
        assert "arXiv 2505.05470" in text and "yifan123/flow_grpo" in text and "config/grpo.py" in text
        assert ("pickscore_sd3_fast_nocfg" if name.endswith("nocfg") else "`pickscore_sd3`") in text

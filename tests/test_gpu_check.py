"""`make gpu-check` (rlft/gpu_check.py): the --tiny CPU path runs the whole check (SD 1.x's DDPO and
TDPO-R epochs, SD3.5's Flow-GRPO step); without CUDA the GPU path refuses in one line; the
written-out configs have Stable Diffusion 1.5's and 3.5 Medium's sizes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from rlft import gpu_check


def run_gpu_check(args: list[str], cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlft.gpu_check", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow  # about 35 s on one core (SD 1.x 20 s, SD3.5 stand-in 15 s)
def test_tiny_path_runs_every_epoch_and_finds_the_ratio_at_one(tmp_path):
    figures_file = tmp_path / "figures.json"
    result = run_gpu_check(["--tiny", "--json", str(figures_file)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "ok"
    figures = json.loads(figures_file.read_text())
    # 16 samples of 2 steps: DDPO's 4 minibatches x 2 columns all come before its one optimizer step
    # (4 x 4 accumulation); TDPO-R steps every 16 micro-steps (train batch 1).
    for name, before_update in (("DDPO", 8), ("TDPO-R", 16)):
        r = figures[name]
        assert r["samples"] == 16 and r["num_steps"] == 2
        assert r["micro_steps_before_update"] == before_update
        assert r["first_ratio"] == pytest.approx(1.0, abs=1e-5) and r["max_abs_ratio_minus_1"] <= 1e-5
        assert r["max_rms_log_ratio"] <= 1e-5
        assert 0 < r["sampling_s"] + r["training_s"] <= r["epoch_s"]
        assert r["floor_sampling_s"] > 0 and r["floor_training_s"] > 0
        assert r["epoch_over_floor"] == pytest.approx(r["epoch_s"] / r["floor_s"])
        assert r["rl_step_images_per_s"] == pytest.approx(16 / r["epoch_s"])
        assert f"rlft gpu-check: {name} on CPU, one epoch" in result.stdout
    assert "peak_gpu_memory_gb" not in figures["DDPO"]  # a CPU run has no GPU memory to report
    # Flow-GRPO on the SD3.5 stand-in: 8 samples of 2 steps (groups of 4), both steps trained, 2
    # minibatches accumulated into the one optimizer step: 4 micro-steps before it, ratio exactly 1
    r = figures["Flow-GRPO"]
    assert r["samples"] == 8 and r["num_steps"] == 2 and r["micro_steps_before_update"] == 4
    assert r["first_ratio"] == 1.0 and r["max_abs_ratio_minus_1"] == 0.0 and r["max_rms_log_ratio"] == 0.0
    assert 0 < r["sampling_s"] + r["training_s"] <= r["epoch_s"] and r["floor_training_s"] > 0
    assert r["rl_step_images_per_s"] == pytest.approx(8 / r["epoch_s"])
    assert r["transformer_m"] == pytest.approx(gpu_check.sd35_transformer_millions(tiny=True))
    assert "rlft gpu-check: Flow-GRPO on CPU, one epoch (model=sd3_5_medium algorithm=grpo" in result.stdout
    assert "a full Flow-GRPO step:" in result.stdout


def test_without_cuda_the_gpu_path_says_so_in_one_line_and_exits_2(tmp_path):
    result = run_gpu_check([], tmp_path, CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "needs a CUDA GPU" in line and "--tiny" in line


def test_the_written_out_configs_have_stable_diffusion_15s_sizes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        parts = {
            "unet": UNet2DConditionModel(**gpu_check.SD15_UNET),
            "vae": AutoencoderKL(**gpu_check.SD15_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**gpu_check.SD15_TEXT)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**gpu_check.VIT_L14_VISION)),
        }
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    # the parameter counts of SD 1.5's unet/, vae/ and text_encoder/ and of CLIP ViT-L/14's image tower
    assert counts == {
        "unet": 859_520_964,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "image_encoder": 303_966_208,
    }


def test_the_gpu_runs_compose_the_presets_on_the_offline_model(tmp_path):
    for experiment, train_batch, accumulation in (("ddpo_aesthetic", 4, 4), ("tdpo_aesthetic", 1, 16)):
        chosen = gpu_check.overrides(experiment, tmp_path / "p", tmp_path / "e", tmp_path, "cuda", 2, None)
        cfg = gpu_check.compose_run(chosen)
        assert (cfg.hardware.accelerator, cfg.hardware.devices) == ("gpu", 1)
        assert (cfg.hardware.precision, cfg.hardware.frozen_dtype) == ("bf16-mixed", "bfloat16")
        assert (cfg.sample.batch_size, cfg.sample.num_steps, cfg.sample.num_batches_per_epoch) == (8, 50, 2)
        assert (cfg.train.batch_size, cfg.train.gradient_accumulation_steps) == (train_batch, accumulation)
        assert cfg.model.components.path == str(tmp_path / "p") and cfg.model.lora.r == 4
        assert cfg.reward._target_ == "rlft.rewards.JpegCompressibility" and list(cfg.eval_rewards) == []
        assert cfg.epochs == 1
    assert cfg.algorithm.neuron_reset and cfg.algorithm.embedder.path == str(tmp_path / "e")


def test_the_sd35_medium_policy_has_its_shapes_and_flow_grpos_adapters():
    from rlft.families.sd3 import SD3_LORA, SD3Policy

    with torch.device("meta"):  # SD3.5-M's full shapes, no memory, no initialisation
        components = gpu_check.sd35_medium_components()
        count = sum(p.numel() for p in components.transformer.parameters())  # (before the adapters)
        policy = SD3Policy(components, lora=SD3_LORA, frozen_dtype="bfloat16", resolution=512, max_sequence_length=256)
    assert count == 2_243_171_520 and gpu_check.sd35_transformer_millions() == count / 1e6
    assert sum(p.numel() for p in components.vae.parameters()) == 83_819_683
    blocks = components.transformer.transformer_blocks
    assert len(blocks) == 24 and [i for i, b in enumerate(blocks) if b.attn2 is not None] == list(range(13))
    assert type(blocks[0].attn.norm_q).__name__ == "RMSNorm"
    # 512 px: 64x64 latents of 16 channels; the conditioning CLIP's 77 + T5's 256 tokens, 4096 wide
    assert policy.latent_shape == (16, 64, 64)
    assert policy.negative_hidden_states.shape == (1, 333, 4096) and policy.negative_pooled.shape == (1, 2048)
    adapted = [n for n, m in policy.transformer.named_modules() if hasattr(m, "lora_A")]
    # 8 projections per block, the last block (context_pre_only) without to_add_out; none on attn2
    assert len(adapted) == 24 * 8 - 1 and not any(".attn2." in n for n in adapted)
    lora = policy.transformer.peft_config["default"]
    assert (lora.r, lora.lora_alpha) == (32, 64)


def test_the_flow_grpo_run_composes_sd35_mediums_recipe_on_the_built_model(tmp_path):
    from rlft.trajectories import trained_steps

    cfg = gpu_check.compose_run(gpu_check.flow_grpo_overrides(tmp_path, "cuda", None, tiny=False))
    assert cfg.model.components == {
        "_target_": "rlft.gpu_check.sd35_medium_components",
        "seed": 0,
        "tiny": False,
    }
    assert cfg.algorithm._target_ == "rlft.algorithms.GRPO" and cfg.sample.kernel._target_.endswith("FlowGRPOKernel")
    assert (cfg.hardware.precision, cfg.hardware.frozen_dtype) == ("bf16-mixed", "bfloat16")
    assert cfg.model.policy.resolution == 512 and (cfg.model.lora.r, cfg.model.lora.lora_alpha) == (32, 64)
    s, t = cfg.sample, cfg.train
    # the model's own sizes: one group of 24 images, 10 SDE steps with guidance, the first 9 trained
    own = gpu_check.compose_run(["model=sd3_5_medium", "algorithm=grpo", "sample.num_images_logged=0"])
    assert (s, t) == (own.sample, own.train)
    assert s.images_per_prompt == s.batch_size * s.num_batches_per_epoch == 24 and s.num_steps == 10
    assert s.guidance_scale == 4.5 and t.cfg
    assert trained_steps(s.num_steps, t.timestep_fraction, t.timestep_window) == (range(9), 9)
    assert cfg.reward._target_ == "rlft.rewards.JpegCompressibility" and list(cfg.eval_rewards) == []

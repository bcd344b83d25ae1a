"""`make gpu-check` (rlft/gpu_check.py): the --tiny CPU path runs the whole check; without CUDA the
GPU path refuses in one line; the written-out configs have Stable Diffusion 1.5's sizes."""

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


@pytest.mark.slow  # about 35 s on one core
def test_tiny_path_runs_both_epochs_and_finds_the_ratio_at_one(tmp_path):
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

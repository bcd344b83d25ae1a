"""`python -m rlft.pretrain` really trains both stages, reports the exact reader's accuracy, and
saves a pipeline that model=toy loads and rlft fine-tunes (a few steps: a smoke run, not the
shipped model's training)."""

import json

import pytest
import torch

from tests.conftest import FAST, run_cli


def test_pretrain_saves_a_pipeline_that_model_toy_trains(tmp_path):
    from hydra import compose, initialize_config_dir

    from rlft.config import CONFIG_DIR
    from rlft.pretrain import pretrain

    out = tmp_path / "pretrain"
    overrides = ["vae.steps=3", "unet.steps=3", "vae.batch_size=8", "unet.batch_size=8"]
    overrides += ["evaluation.samples=8", "evaluation.batch_size=8", "evaluation.num_steps=2"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=overrides)
    pretrain(cfg, out)
    report = json.loads((out / "pretrain_report.json").read_text())
    for key in ("reconstruction_accuracy", "sample_color", "sample_shape", "sample_alignment"):
        assert 0.0 <= report[key] <= 1.0
    assert (out / "pipeline" / "model_index.json").is_file()
    from rlft.toy.model import load_toy

    saved = load_toy(str(out / "pipeline"))  # the schedule and the word-level tokenizer travel with it
    assert saved.scheduler.config.prediction_type == "v_prediction" and saved.scheduler.config.rescale_betas_zero_snr
    assert len(saved.tokenizer.tokenize("a red circle on a blue background")) == 7
    result = run_cli(
        [*FAST, "model=toy", f"model.path={out / 'pipeline'}", "prompt=toy", "reward=toy_alignment"]
        + [f"output_root={tmp_path / 'runs'}"],
        cwd=tmp_path,
    )
    assert "epoch 0: reward_mean=" in result.stdout


def test_model_toy_without_its_pipeline_names_the_fix(tmp_path):
    result = run_cli([*FAST, "model=toy", f"model.path={tmp_path / 'nothing'}"], cwd=tmp_path, check=False)
    assert result.returncode == 2 and "give the pipeline/ directory of a `python -m rlft.pretrain` run" in result.stderr


def test_latent_noise_is_a_fixed_fraction_of_the_latents_spread():
    from rlft.pretrain import perturbed

    torch.manual_seed(0)
    for scale in (0.01, 1.0, 100.0):  # however the encoder scales its latents
        latents = scale * torch.randn(64, 4, 8, 8)
        noise = perturbed(latents, 0.5) - latents
        assert (noise.std() / latents.std()).item() == pytest.approx(0.5, rel=0.03)
        assert abs(noise.mean().item()) < 0.02 * scale

"""One-epoch runs: every prompt set, reward and logger, mixed precision, eval rewards."""

import csv
import hashlib

import pytest
import torch

from rlft.config import options
from rlft.train import train
from tests.conftest import FAST, compose_config


def run(tmp_path, overrides):
    cfg = compose_config([*FAST, f"output_root={tmp_path}", *overrides])
    metrics = train(cfg, tmp_path / "run")
    return metrics, tmp_path / "run"


def read_metrics(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


PROMPTS = [p for p in options("prompt") if p != "from_file"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_one_epoch_per_prompt_set(tmp_path, prompt):
    metrics, _ = run(tmp_path, [f"prompt={prompt}", "reward=brightness"])
    assert metrics["samples"] == 4


@pytest.mark.parametrize("reward", options("reward"))
def test_one_epoch_per_reward(tmp_path, reward):
    _, run_dir = run(tmp_path, [f"reward={reward}"])
    rows = read_metrics(run_dir)
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    for key in (
        "reward_mean",
        "reward_std",
        "approx_kl",
        "clipfrac",
        "loss",
        "images_per_s",
        "sampling_s",
        "reward_s",
        "training_s",
    ):
        assert rows[0][key] != "", key
    if reward == "jpeg_compressibility":
        assert float(rows[0]["reward_mean"]) < 0
    assert (run_dir / "images" / "epoch_0000.png").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_tensorboard_logger_writes_scalars_and_images(tmp_path):
    _, run_dir = run(tmp_path, ["logger=tensorboard"])
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0})
    accumulator.Reload()
    assert "reward_mean" in accumulator.Tags()["scalars"]
    assert accumulator.Tags()["images"]
    assert (run_dir / "metrics.csv").is_file()


def test_wandb_logger_offline(tmp_path):
    _, run_dir = run(tmp_path, ["logger=wandb"])
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
    # the wandb run id is derived from the run directory, so a resumed run continues the same one
    assert runs[0].name.endswith(hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16])
    assert (run_dir / "metrics.csv").is_file()


def test_bf16_autocast_with_frozen_bf16_weights(tmp_path):
    metrics, _ = run(tmp_path, ["model=tiny_lora", "hardware.precision=bf16-mixed", "hardware.frozen_dtype=bfloat16"])
    assert metrics["reward_mean"] == metrics["reward_mean"]  # not NaN


def test_eval_rewards_logged_beside_the_training_reward(tmp_path):
    _, run_dir = run(tmp_path, ["reward=brightness", "eval_rewards=[jpeg_compressibility,jpeg_incompressibility]"])
    row = read_metrics(run_dir)[0]
    assert float(row["eval_jpeg_compressibility_mean"]) == pytest.approx(
        -float(row["eval_jpeg_incompressibility_mean"])
    )


def test_inner_epochs_accumulation_and_timestep_fraction(tmp_path):
    _, run_dir = run(
        tmp_path,
        [
            "train.num_inner_epochs=2",
            "train.batch_size=1",
            "train.gradient_accumulation_steps=2",
            "train.timestep_fraction=0.5",
        ],
    )
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # 4 samples / batch 1 = 4 minibatches, one step per 2 of them, 2 inner epochs: 4 optimizer steps
    assert checkpoint["global_step"] == 4


@pytest.mark.parametrize("experiment", options("experiment"))
def test_presets_run_one_epoch_on_the_tiny_model(tmp_path, experiment):
    cfg = compose_config([f"experiment={experiment}", "model=tiny", "hardware=cpu", *FAST, f"output_root={tmp_path}"])
    assert train(cfg, tmp_path / "run")["samples"] == 4


def test_ddpo_sf_steps_once_per_epoch(tmp_path):
    _, run_dir = run(tmp_path, ["algorithm=ddpo_sf", "train.batch_size=1", "train.gradient_accumulation_steps=1"])
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


@pytest.mark.parametrize("algorithm", ["rwr", "rwr_sparse"])
def test_reward_weighted_algorithms_run(tmp_path, algorithm):
    metrics, _ = run(tmp_path, [f"algorithm={algorithm}", "train.num_inner_epochs=2"])
    assert metrics["loss"] > 0 and 0 < metrics["kept_fraction"] <= 1

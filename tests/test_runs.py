"""One-epoch runs: every prompt set, reward and logger, mixed precision, eval rewards."""

import csv

import pytest
import torch

from rlft.config import options
from rlft.errors import ConfigError
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


# learned rewards whose real weights cannot be here; each has a `<name>_tiny` twin that runs offline
NEEDS_WEIGHTS = {
    "aesthetic": "openai/clip-vit-large-patch14",
    "pickscore": "yuvalkirstain/PickScore_v1",
    "hpsv2": "HPSv2 tokenizer",
    "imagereward": r"ImageReward\.pt",
    "llava_bertscore": "llava-hf/llava-1.5-7b-hf",
}
# (reward=remote needs a server: tests/test_reward_server.py runs it)
# (the toy rewards score toy captions only: their run is in test_toy_rewards.py, with prompt=toy)
AVAILABLE_REWARDS = [r for r in options("reward") if r not in {*NEEDS_WEIGHTS, "remote"} and not r.startswith("toy_")]


@pytest.mark.parametrize("reward", sorted(NEEDS_WEIGHTS))
def test_learned_rewards_without_weights_name_what_is_missing(tmp_path, reward):
    with pytest.raises(ConfigError, match=NEEDS_WEIGHTS[reward]):
        run(tmp_path, [f"reward={reward}"])


def test_cross_reward_evaluation_with_learned_rewards(tmp_path):
    metrics, _ = run(
        tmp_path,
        [
            "algorithm=tdpo",
            "reward=pickscore_tiny",
            "eval_rewards=[aesthetic_tiny,hpsv2_tiny,imagereward_tiny,brightness]",
        ],
    )
    for name in ("aesthetic_tiny", "hpsv2_tiny", "imagereward_tiny", "brightness"):
        assert f"eval_{name}_mean" in metrics and f"eval_{name}_std" in metrics


@pytest.mark.parametrize("reward", AVAILABLE_REWARDS)
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


# (the TensorBoard and wandb loggers' run: tests/test_run_logs.py)


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


# The cheap stand-ins a preset's heavy parts are swapped for: the tiny model on the CPU, a
# programmatic reward, no out-of-domain evaluators, and the tiny model's critic encoder.
SUBSTITUTES = [
    "model=tiny",
    "hardware=cpu",
    "reward=brightness",
    "eval_rewards=[]",
    "num_checkpoints=1",
    "train.num_inner_epochs=1",
    "showcase.samples=0",
]


# A flow-matching preset's (Flow-GRPO's, on SD3): the tiny SD3 at 8 px, in groups of 2.
FLOW_SUBSTITUTES = ["model=tiny_sd3", "++model.policy.resolution=8", "sample.images_per_prompt=2"]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_presets_run_one_epoch_on_the_tiny_model(tmp_path, experiment):
    substitutes = SUBSTITUTES
    if compose_config([f"experiment={experiment}"]).model.policy._target_.endswith("SD3Policy"):
        substitutes = [*FLOW_SUBSTITUTES, *(o for o in SUBSTITUTES if not o.startswith("model="))]
    overrides = [f"experiment={experiment}", *substitutes, *FAST, f"output_root={tmp_path}"]
    if "embedder" in compose_config(overrides).algorithm:
        overrides.append("algorithm.embedder=${model.image_embedder}")
    assert train(compose_config(overrides), tmp_path / "run")["samples"] == 4


# Without their weights (no hub here), presets stop before any work, naming what is missing.
MISSING = {
    "ddpo_aesthetic": "openai/clip-vit-large-patch14",
    "ddpo_alignment": "llava-hf/llava-1.5-7b-hf",
    "tdpo_aesthetic": "openai/clip-vit-large-patch14",
    "tdpo_pickscore": "yuvalkirstain/PickScore_v1",
    "tdpo_hpsv2": "HPSv2 tokenizer",
}


@pytest.mark.parametrize("experiment", sorted(MISSING))
def test_presets_without_their_weights_stop_with_one_message(tmp_path, experiment):
    cfg = compose_config([f"experiment={experiment}", "hardware=cpu", f"output_root={tmp_path}"])
    with pytest.raises(ConfigError, match=MISSING[experiment]):
        train(cfg, tmp_path / "run")


def test_presets_state_the_paper_settings():
    tdpo = compose_config(["experiment=tdpo_pickscore"])
    assert tdpo.algorithm.neuron_reset and tdpo.algorithm.embedder.hub_id == "yuvalkirstain/PickScore_v1"
    assert (tdpo.sample.batch_size, tdpo.sample.num_batches_per_epoch, tdpo.sample.num_steps) == (8, 4, 50)
    assert (tdpo.train.batch_size, tdpo.train.gradient_accumulation_steps, tdpo.epochs) == (1, 16, 100)
    assert list(tdpo.eval_rewards) == ["hpsv2", "imagereward", "aesthetic"]
    assert compose_config(["experiment=tdpo_pickscore", "algorithm=tdpo"]).algorithm.neuron_reset is False
    rwr = compose_config(["experiment=rwr_compressibility"])
    assert rwr.model.lora is None and rwr.algorithm.temperature == 0.2 and rwr.train.num_inner_epochs == 5
    assert rwr.sample.batch_size * rwr.sample.num_batches_per_epoch * 8 == 10240
    aesthetic = compose_config(["experiment=ddpo_aesthetic"])
    assert (aesthetic.train.gradient_accumulation_steps, aesthetic.algorithm.stat_buffer_size) == (4, 32)


def test_ddpo_sf_steps_once_per_epoch(tmp_path):
    _, run_dir = run(tmp_path, ["algorithm=ddpo_sf", "train.batch_size=1", "train.gradient_accumulation_steps=1"])
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


@pytest.mark.parametrize("algorithm", ["rwr", "rwr_sparse"])
def test_reward_weighted_algorithms_run(tmp_path, algorithm):
    metrics, _ = run(tmp_path, [f"algorithm={algorithm}", "train.num_inner_epochs=2"])
    assert metrics["loss"] > 0 and 0 < metrics["kept_fraction"] <= 1


@pytest.mark.parametrize("algorithm", ["tdpo", "tdpo_r"])
def test_tdpo_steps_every_accumulation_window_of_one_column(tmp_path, algorithm):
    metrics, run_dir = run(
        tmp_path,
        [
            f"algorithm={algorithm}",
            "algorithm.neuron_reset_freq=1",
            "train.batch_size=1",
            "train.gradient_accumulation_steps=2",
        ],
    )
    # 4 samples / batch 1 = 4 minibatches per column, a step per 2 of them, 3 columns: 6 steps
    # of each of the two optimizers (Lightning's global_step counts every optimizer's steps)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 * 6
    assert len(checkpoint["optimizer_states"]) == 2  # the policy's and the critic's
    assert any(key.startswith("algorithm_modules.critic.") for key in checkpoint["state_dict"])
    assert not any(key.startswith("algorithm_modules.embedder.") for key in checkpoint["state_dict"])
    assert metrics["cf_loss"] > 0 and 0 <= metrics["dormant_fraction"] <= 1
    assert ("reset_neurons" in metrics) == (algorithm == "tdpo_r")


@pytest.mark.parametrize("algorithm", ["ddpo", "tdpo"])
@pytest.mark.parametrize("model", ["tiny", "tiny_lora"])
def test_kl_regularized_runs_log_the_kl(tmp_path, algorithm, model):
    metrics, _ = run(
        tmp_path,
        [f"algorithm={algorithm}", f"model={model}", "algorithm.kl.coef=1.0", "algorithm.kl.target=0.1", "epochs=2"],
    )
    assert metrics["kl_coef"] != 0.2  # adapted after the first epoch
    assert metrics["mean_kl"] != 0.0  # the policy moved away from the reference during epoch 0

"""Every bad input a user can give ends in one line `rlft: error: <key>=<value> ...` naming the fix,
exit code 2 and no traceback (HYDRA_FULL_ERROR=1 keeps the traceback). Most classes are checked
in-process (validate, build); a few through `python -m rlft` for the one-line, exit-2 behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from rlft.config import build
from rlft.errors import ConfigError, exit_with
from rlft.train import build_module, build_trainer, validate
from rlft.validation import RunDirectoryCheck
from tests.conftest import FAST, compose_config, pinned, run_cli

HINT = "Check the hardware group (hardware=cpu runs on any machine)."


def message_of(overrides: list[str], what: str = "validate", tmp_path=None) -> str:
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as raised:
        if what == "validate":
            validate(cfg)
        elif what == "module":
            validate(cfg)
            build_module(cfg, tmp_path)
        elif what == "trainer":
            validate(cfg)
            build_trainer(cfg)
        else:
            build(cfg[what], what)
    return str(raised.value)


# (override, the message's start): sizes, counts, fractions, rates, seeds, dtypes, names, lists
CONFIG_VALUES = [
    ("sample.batch_size=0", "sample.batch_size=0 must be at least 1"),
    ("sample.num_batches_per_epoch=0", "sample.num_batches_per_epoch=0 must be at least 1"),
    ("train.batch_size=0", "train.batch_size=0 must be at least 1"),  # was a ZeroDivisionError
    ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps=0 must be at least 1"),
    ("sample.num_steps=0", "sample.num_steps=0 must be at least 1"),
    ("sample.images_per_prompt=0", "sample.images_per_prompt=0 must be at least 1"),
    ("epochs=-1", "epochs=-1 must be at least 1"),
    ("showcase.samples=-3", "showcase.samples=-3 must be >= 0"),
    ("showcase.batch_size=0", "showcase.batch_size=0 must be at least 1"),
    ("sample.num_images_logged=-1", "sample.num_images_logged=-1 must be >= 0"),
    ("num_checkpoints=-5", "num_checkpoints=-5 must be at least -1"),
    ("save_freq=0", "save_freq=0 must be at least 1"),
    ("seed=-1", "seed=-1 must be in [0, 4294967295]"),
    ("train.timestep_fraction=2", "train.timestep_fraction=2 must be in (0, 1]"),
    ("train.timestep_window=[0.2]", "train.timestep_window=[0.2] must be [start, stop]"),
    ("train.learning_rate=0", "train.learning_rate=0 must be > 0"),
    ("train.learning_rate=-1", "train.learning_rate=-1 must be > 0"),
    ("train.max_grad_norm=0", "train.max_grad_norm=0 must be > 0"),
    ("train.adam_beta1=1.5", "train.adam_beta1=1.5 must be in [0, 1)"),
    ("train.adam_beta2=-0.1", "train.adam_beta2=-0.1 must be in [0, 1)"),
    ("train.adam_epsilon=0", "train.adam_epsilon=0 must be > 0"),
    ("train.adam_weight_decay=-1", "train.adam_weight_decay=-1 must be >= 0"),
    ("sample.kernel.eta=-1", "sample.kernel.eta=-1 must be >= 0"),
    ("algorithm.clip_range=-1", "algorithm.clip_range=-1 must be > 0"),
    ("algorithm.kl.coef=-1", "algorithm.kl.coef=-1 must be >= 0"),
    ("algorithm=grpo", "sample.images_per_prompt=1 must be at least 2 with algorithm=grpo"),
    ("algorithm=grpo sample.images_per_prompt=2 algorithm.kl_beta=-1", "algorithm.kl_beta=-1 must be >= 0"),
    ("algorithm=rwr_sparse algorithm.percentile=150", "algorithm.percentile=150 must be in [0, 100]"),
    ("algorithm=tdpo algorithm.gamma=0", "algorithm.gamma=0 must be in (0, 1]"),
    ("algorithm=tdpo algorithm.critic_dropout=[0.2,1.5]", "algorithm.critic_dropout=[0.2, 1.5] must hold"),
    ("model=tiny_lora model.lora.r=0", "model.lora.r=0 must be at least 1"),
    ("epochs=ten", "epochs='ten' should be an integer"),
    ("train.cfg=3", "train.cfg=3 should be true or false"),
    ("perf.trajectory_dtype=int8", "perf.trajectory_dtype=int8 must be one of float32, bfloat16, float16"),
    ("perf.compile=fast", "perf.compile='fast' must be true, false, or torch.compile's arguments"),
    ("hardware.frozen_dtype=float8", "hardware.frozen_dtype=float8 must be one of float32, bfloat16, float16"),
    ("hardware.num_nodes=0", "hardware.num_nodes=0 must be at least 1"),
    ("eval_rewards=[nonexistent]", "eval_rewards=[nonexistent]: nonexistent is not a reward option; available:"),
    (
        "eval_rewards=brightness",
        "eval_rewards=brightness must be a list of reward options, e.g. eval_rewards=[brightness]",
    ),
    ("reward=remote reward.url=notaurl", "reward.url=notaurl is not an http(s) URL"),
    ("reward=remote reward.url=ftp://x", "reward.url=ftp://x is not an http(s) URL"),
    ("reward=remote reward.batch_size=0", "reward.batch_size=0 must be at least 1"),
    ("reward=remote reward.timeout=-1", "reward.timeout=-1 must be > 0"),
    ("prompt=from_file", "prompt.path=??? must be set on the command line"),
]


@pytest.mark.parametrize(("override", "start"), CONFIG_VALUES, ids=[o for o, _ in CONFIG_VALUES])
def test_bad_config_values_name_key_and_value(override, start):
    message = message_of(override.split())
    assert message.startswith(start)
    assert HINT not in message  # the hardware hint only for hardware problems


# hardware: names and forms are told from the config; the hint only where it is a hardware problem
HARDWARE = [
    ("hardware.precision=banana", "hardware.precision=banana must be one of transformer-engine"),
    ("hardware.devices=0", "hardware.devices=0 must be a number of devices"),
    ("hardware.devices=abc", "hardware.devices=abc must be a number of devices"),
    ("hardware.accelerator=banana", "hardware.accelerator=banana must be one of auto, cpu, gpu"),
    ("hardware.strategy=banana", "hardware.strategy=banana must be one of auto, ddp"),
]


@pytest.mark.parametrize(("override", "start"), HARDWARE, ids=[o for o, _ in HARDWARE])
def test_bad_hardware_values_keep_the_hardware_hint(override, start):
    message = message_of([override])
    assert message.startswith(start) and message.endswith(HINT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_on_a_cpu_machine_keeps_the_hardware_hint():
    message = message_of(["hardware=gpu"], "trainer")
    assert message.startswith("hardware.accelerator=gpu: no CUDA GPU is visible") and message.endswith(HINT)


def test_lightning_refusing_the_hardware_is_named_with_the_hint():
    pytest.importorskip("lightning")
    try:
        import deepspeed  # noqa: F401

        pytest.skip("deepspeed is installed here")
    except ImportError:
        pass
    message = message_of(["hardware.strategy=deepspeed"], "trainer")
    assert message.startswith("hardware.accelerator=cpu hardware.devices=1") and "DeepSpeed" in message
    assert message.endswith(HINT)


# files and directories the run reads or writes
def test_bad_paths_name_key_value_and_fix(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    empty_prompts = tmp_path / "empty.txt"
    empty_prompts.write_text("\n  \n")
    cases = [
        (["model=sd14", "model.path=/nonexistent"], "validate", "model.path=/nonexistent: there is no such directory"),
        (["model=sd14", f"model.path={afile}"], "validate", f"model.path={afile}: it is a file, not a pipeline"),
        (["model=sd15", f"model.path={empty_dir}"], "validate", f"model.path={empty_dir}: it has no model_index.json"),
        (["model=toy", f"model.path={empty_dir}"], "validate", f"model.path={empty_dir}: it has no model_index.json"),
        (
            [f"debug.dump_dir={afile}/d"],
            "validate",
            f"debug.dump_dir={afile}/d: cannot write there ({afile} is a file)",
        ),
        (["prompt=from_file", f"prompt.path={tmp_path}/missing.txt"], "prompt", "prompt.path="),
        (["prompt=from_file", f"prompt.path={empty_prompts}"], "prompt", f"prompt.path={empty_prompts}: the prompt"),
        (["prompt=from_file", f"prompt.path={tmp_path}"], "prompt", f"prompt.path={tmp_path}: prompt file is a dir"),
        (["prompt=imagenet_dogs", "prompt.low=500", "prompt.high=10"], "prompt", "prompt.low=500 and high=10 select"),
        (["prompt=nouns_activities", "prompt.nouns=nope.txt"], "prompt", "prompt.nouns=nope.txt: prompt file not"),
        (["prompt=manual", "prompt.prompts=[]"], "prompt", "prompt.prompts=[]: a prompt source needs"),
    ]
    for overrides, what, start in cases:
        assert message_of(overrides, what).startswith(start), overrides
    assert "model.path=null loads CompVis/stable-diffusion-v1-4" in message_of(cases[0][0])
    assert "python -m rlft.pretrain" in message_of(cases[3][0])


# a reward's own arguments, checked by the reward and named by their key in the run's config
REWARD_ARGUMENTS = [
    ("reward=aesthetic_tiny reward.dtype=int8", "reward.dtype='int8' is not one of"),
    ("reward=aesthetic_tiny reward.device=banana", "reward.device=banana is not a device"),
    ("reward=aesthetic_tiny reward.batch_size=0", "reward.batch_size=0 must be at least 1"),
    ("reward=aesthetic_tiny +reward.head_path=/nonexistent.pth", "reward.head_path=/nonexistent.pth: cannot load"),
    ("reward=brightness reward.channel=pink", "reward.channel='pink' is not one of"),
    ("reward=jpeg_compressibility reward.quality=101", "reward.quality=101 must be a JPEG quality in [0, 100]"),
    ("reward=hpsv2_tiny +reward.version=3", "reward.version='3' is not one of"),
    ("reward=hpsv2_tiny +reward.checkpoint=/nonexistent.pt", "reward.checkpoint=/nonexistent.pt: cannot load HPSv2"),
    ("reward=imagereward reward.checkpoint=/no.pt", "reward.checkpoint=/no.pt: cannot load ImageReward"),
    ("reward=hpsv2", "reward.tokenizer=laion/CLIP-ViT-H-14-laion2B-s32B-b79K: cannot load the HPSv2 tokenizer"),
    ("reward=toy_shape reward.aspect=size", "reward.aspect='size' is not one of"),
    ("+reward.level=3", "reward.level=3 is not an argument of rlft.rewards.JpegCompressibility; it takes quality"),
]


@pytest.mark.parametrize(("override", "start"), REWARD_ARGUMENTS, ids=[o for o, _ in REWARD_ARGUMENTS])
def test_bad_reward_arguments_name_their_key(override, start):
    assert message_of(override.split(), "reward").startswith(start)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_reward_device_cuda_without_a_gpu():
    assert message_of(["reward=aesthetic_tiny", "reward.device=cuda"], "reward").startswith(
        "reward.device=cuda: no CUDA GPU is visible"
    )


def test_missing_weights_name_the_rewards_own_key(tmp_path):
    """The aesthetic reward's CLIP model is reward.embedder, not the TDPO critic's encoder."""
    message = message_of(["reward=aesthetic"], "reward")
    assert message.startswith(
        "reward.embedder.path=null: cannot load the image encoder 'openai/clip-vit-large-patch14'"
    )
    assert "pass reward.embedder.path=/a/local/copy" in message and "algorithm.embedder" not in message
    message = message_of(["reward=pickscore"], "reward")
    assert message.startswith("reward.model.path=null: cannot load the CLIP model")
    assert "pass reward.model.path=" in message
    # the same encoder as TDPO's critic: named by the key the user sets (algorithm.embedder is an interpolation)
    message = message_of(["algorithm=tdpo", "model=sd14"], "algorithm")
    assert message.startswith("model.image_embedder.path=null: cannot load the image encoder")


def test_eval_reward_errors_name_their_option_file(tmp_path):
    message = message_of(["eval_rewards=[aesthetic]"], "module", tmp_path)
    assert message.startswith(
        "eval_rewards=[aesthetic]: in conf/reward/aesthetic.yaml, embedder.path=null: cannot load"
    )


def test_unknown_algorithm_option_lists_its_arguments():
    message = message_of(["+algorithm.clip=0.1"], "algorithm")
    assert message.startswith("algorithm.clip=0.1 is not an argument of rlft.algorithms.DDPO; it takes ")
    assert "clip_range" in message


def test_bad_lora_target_modules(tmp_path):
    message = message_of(["model=tiny_lora", "model.lora.target_modules=[nope]"], "module", tmp_path)
    assert message.startswith("model.lora.target_modules=['nope']: peft cannot add these adapters to the UNet")


# the run directory, made by a Hydra callback before anything else
@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_run_directory_that_cannot_be_made(tmp_path, capsys, key, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    afile = tmp_path / "afile"
    afile.write_text("x")
    root = f"{afile}/sub"
    config = OmegaConf.create({"output_root": root, "hydra": {key.split(".")[1]: {"dir": f"{root}/runs/1"}}})
    check = RunDirectoryCheck()
    with pytest.raises(SystemExit) as exited:
        check.on_run_start(config) if key == "hydra.run.dir" else check.on_multirun_start(config)
    assert exited.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"rlft: error: output_root={root}: cannot create the run directory {root}/runs/1")
    assert f"({afile} is a file)" in line and "\n" not in line
    config.output_root = str(tmp_path / "elsewhere")
    with pytest.raises(SystemExit):
        RunDirectoryCheck.make(config, key)
    assert capsys.readouterr().err.startswith(f"rlft: error: {key}={root}/runs/1: cannot create")
    config.hydra[key.split(".")[1]].dir = str(tmp_path / "fine" / "runs" / "1")
    RunDirectoryCheck.make(config, key)  # a directory that can be made is made, as Hydra would
    assert (tmp_path / "fine" / "runs" / "1").is_dir()


def test_exit_with_prints_one_line_or_reraises(capsys, monkeypatch):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exited:
        exit_with(MisconfigurationException("`Trainer(logger=...)` wants a Logger"))
    assert exited.value.code == 2
    assert capsys.readouterr().err == "rlft: error: `Trainer(logger=...)` wants a Logger\n"  # no hardware hint
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="epochs"):
        exit_with(ConfigError("epochs=0 must be at least 1"))


# through the command line: one line, exit 2, no traceback
def assert_one_line(result: subprocess.CompletedProcess, start: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rlft: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"rlft: error: {start}"), result.stderr[-3000:]
    return errors[0]


CLI = [
    (["train.batch_size=0"], "train.batch_size=0 must be at least 1"),
    (["reward=aesthetic"], "reward.embedder.path=null: cannot load the image encoder"),
]


@pytest.mark.parametrize(("overrides", "start"), CLI, ids=[o[0] for o, _ in CLI])
def test_cli_prints_one_line(tmp_path, overrides, start):
    result = run_cli([*FAST, *overrides, f"output_root={tmp_path}"], cwd=tmp_path, check=False)
    assert_one_line(result, start)
    assert not list(tmp_path.glob("runs/*/checkpoints"))  # stopped before training


def test_cli_run_directory_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run_cli([*FAST, f"output_root={tmp_path}/afile/out"], cwd=tmp_path, check=False)
    assert_one_line(result, f"output_root={tmp_path}/afile/out: cannot create the run directory")


def test_cli_full_error_keeps_the_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rlft", *pinned([*FAST, "train.batch_size=0", f"output_root={tmp_path}"])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "ConfigError: train.batch_size=0 must be at least 1" in result.stderr

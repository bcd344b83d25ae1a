"""What a run leaves for a researcher: its config in every logger (and in config.yaml from the
start), captioned images with a per-image JSON index, a wandb group per multirun, and a console
line whose PPO diagnostics are there only when they were measured."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import struct

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict
from PIL import Image

from rlft.algorithms.base import MetricMeans
from rlft.algorithms.ddpo import DDPO
from rlft.algorithms.rwr import RewardWeightedRegression
from rlft.gpu_check import extra_callbacks
from rlft.images import GAP, caption
from rlft.module import console_line
from rlft.train import build_loggers, finish_wandb_run, train
from tests.conftest import FAST, compose_config

# FAST's 4 samples in one optimizer step (2 minibatches of 2, accumulated): the PPO diagnostics are
# never measured in this run. Every sample is logged (num_images_logged 8 > 4).
OVERRIDES = [
    *FAST,
    "train.gradient_accumulation_steps=2",
    "logger=[tensorboard,wandb]",
    "eval_rewards=[brightness]",
]


class AtFirstEpoch(Callback):
    """What is on disk when the first epoch starts (all that a run killed in it would leave)."""

    def __init__(self, run_dir):
        self.run_dir, self.seen = run_dir, {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            for name in ("config.yaml", "hparams.yaml"):
                path = self.run_dir / name
                self.seen[name] = path.read_text() if path.is_file() else None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    run_dir = root / "run"
    cfg = compose_config([*OVERRIDES, f"output_root={root}"])
    watch = AtFirstEpoch(run_dir)
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        with extra_callbacks([watch]), contextlib.redirect_stdout(stdout):
            final = train(cfg, run_dir)
    with (run_dir / "metrics.csv").open() as f:
        (row,) = csv.DictReader(f)
    return {"cfg": cfg, "dir": run_dir, "final": final, "row": row, "seen": watch.seen, "stdout": stdout.getvalue()}


def wandb_records(run_dir) -> list:
    """The protobuf records of the offline wandb run in `run_dir`: a .wandb file is a LevelDB-style
    log (32 KiB blocks of chunks, each with a 7-byte header: crc, length, type) after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
    data, position, pending, records = path.read_bytes(), 7, b"", []
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def test_config_is_written_at_the_start_and_to_every_logger(run):
    cfg, run_dir = run["cfg"], run["dir"]
    at_start = run["seen"]
    assert at_start["config.yaml"] is not None and OmegaConf.create(at_start["config.yaml"]) == cfg
    # the CSV logger's hparams.yaml: the resolved config, nested
    assert yaml.safe_load(at_start["hparams.yaml"])["train"]["learning_rate"] == cfg.train.learning_rate
    assert not list(run_dir.glob(".*.tmp"))

    # wandb: the config record of the offline run, nested keys; no group for a single run
    records = wandb_records(run_dir)
    (config,) = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    values = {item.key: json.loads(item.value_json) for item in config.update}
    assert values["train"]["learning_rate"] == cfg.train.learning_rate and values["eval_rewards"] == ["brightness"]
    (wandb_run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert wandb_run.run_group == ""
    # the wandb run id is derived from the run directory, so a resumed run continues the same one
    assert wandb_run.run_id == hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]


def test_tensorboard_has_the_config_in_its_hparams_tab_against_reward_mean(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (events,) = (run["dir"] / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    data = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(raw)
        for tag, raw in accumulator.PluginTagToContent("hparams").items()
    }
    assert [m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos] == ["reward_mean"]
    hparams = data["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["train/learning_rate"].number_value == pytest.approx(run["cfg"].train.learning_rate)
    assert hparams["algorithm/_target_"].string_value == run["cfg"].algorithm._target_
    scalars = accumulator.Tags()["scalars"]
    assert "reward_mean" in scalars and "hp_metric" not in scalars  # no placeholder series
    assert accumulator.Tags()["images"] == ["samples"]
    (text,) = accumulator.Tensors("samples/captions/text_summary")
    lines = text.tensor_proto.string_val[0].decode().split("  \n")
    captions = (run["dir"] / "images" / "epoch_0000.txt").read_text().splitlines()
    assert lines == [f"{i}: {c}" for i, c in enumerate(captions)]


def test_epoch_json_lists_the_grid_images_with_the_trajectories_rewards(run):
    images, row = run["dir"] / "images", run["row"]
    listing = json.loads((images / "epoch_0000.json").read_text())
    assert set(listing) == {"epoch", "images"} and listing["epoch"] == 0
    entries = listing["images"]
    assert [e["index"] for e in entries] == list(range(4))  # all 4 samples
    for entry in entries:
        assert set(entry) == {"index", "prompt", "reward", "eval_rewards"}
        assert set(entry["eval_rewards"]) == {"brightness"}
        assert isinstance(entry["prompt"], str) and isinstance(entry["reward"], float)
    rewards = torch.tensor([e["reward"] for e in entries])
    assert rewards.mean().item() == pytest.approx(float(row["reward_mean"]), rel=1e-6)
    assert rewards.std(unbiased=False).item() == pytest.approx(float(row["reward_std"]), rel=1e-4, abs=1e-7)
    brightness = [e["eval_rewards"]["brightness"] for e in entries]
    assert sum(brightness) / 4 == pytest.approx(float(row["eval_brightness_mean"]), rel=1e-6)
    # the grid's captions (its .txt, and the text under each tile) are the JSON's entries
    captions = (images / "epoch_0000.txt").read_text().splitlines()
    assert captions == [caption(e["prompt"], e["reward"], e["eval_rewards"]) for e in entries]
    assert captions[0].startswith(f'"{entries[0]["prompt"]}" | reward ') and " | brightness " in captions[0]
    grid = Image.open(images / "epoch_0000.png")
    tile = (grid.width + GAP) // 4 - GAP  # 4 tiles in a row
    assert tile >= 128 and grid.height > tile  # enlarged 32-pixel images, with the captions under them


def test_single_step_epoch_reports_no_ppo_diagnostics(run):
    row, final = run["row"], run["final"]
    assert row["optimizer_steps"] == "1.0"
    assert math.isnan(float(row["approx_kl"])) and math.isnan(float(row["clipfrac"]))  # a stable column: NaN
    assert "approx_kl" not in final and "ratio" not in final and final["optimizer_steps"] == 1.0
    json.loads((run["dir"] / "final_metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    (line,) = [line for line in run["stdout"].splitlines() if line.startswith("epoch 0:")]
    assert " steps=1 " in line and "approx_kl" not in line and "clipfrac" not in line


def test_ppo_diagnostics_count_only_micro_steps_after_an_update():
    means = MetricMeans()
    means.add(loss=torch.tensor(1.0), approx_kl=torch.tensor(0.0), ratio=torch.tensor(1.0))
    assert math.isnan(means.means()["approx_kl"]) and means.means()["loss"] == 1.0
    means.stepped()
    means.add(loss=torch.tensor(3.0), approx_kl=torch.tensor(0.5), ratio=torch.tensor(1.5))
    means.add(loss=torch.tensor(2.0), approx_kl=torch.tensor(0.25), ratio=torch.tensor(0.5))
    means.stepped()
    result = means.means()
    assert result == {"loss": 2.0, "approx_kl": 0.375, "ratio": 1.0, "optimizer_steps": 2.0}

    timings = {"sampling_s": 1.0, "training_s": 2.0}
    measured = {"reward_mean": 0.5, "reward_std": 0.1, **result, "clipfrac": 0.25, **timings}
    assert "steps=2 approx_kl=3.75e-01 clipfrac=0.250 sampling=" in console_line(3, measured, DDPO.console_metrics)
    rwr = {"reward_mean": 0.5, "reward_std": 0.1, "loss": 0.0123, "optimizer_steps": 4.0, **timings}
    assert "steps=4 loss=0.0123 sampling=" in console_line(3, rwr, RewardWeightedRegression.console_metrics)


def test_the_jobs_of_a_multirun_share_a_wandb_group(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    def loggers_in_job(overrides):
        cfg = compose_config(["logger=wandb", f"output_root={tmp_path}", *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.runtime.output_dir = str(tmp_path / "multirun" / "2030-01-02_03-04-05" / "3")
            cfg.hydra.sweep.subdir = "3"
        HydraConfig.instance().set_config(cfg)
        return build_loggers(cfg, tmp_path / "job")

    try:
        (_, wandb_logger) = loggers_in_job([])
        assert wandb_logger._wandb_init["group"] == "2030-01-02_03-04-05"
        assert wandb_logger.experiment.group == "2030-01-02_03-04-05"  # the offline run, started now
        finish_wandb_run([wandb_logger])
        (record,) = [r.run for r in wandb_records(tmp_path / "job") if r.WhichOneof("record_type") == "run"]
        assert record.run_group == "2030-01-02_03-04-05"
        (_, chosen) = loggers_in_job(["logger.wandb.group=ablation"])
        assert chosen._wandb_init["group"] == "ablation"  # the user's group wins
    finally:
        HydraConfig.instance().cfg = None
    (_, single) = build_loggers(compose_config(["logger=wandb"]), tmp_path / "single")
    assert single._wandb_init["group"] is None

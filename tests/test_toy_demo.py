"""The one-shape toy demo (`python -m rlft model=toy`, the default run before the compositional
one): DDPO on the shipped toy model with the exact alignment reward, and its before/after showcase
of fixed prompts and seeds."""

import csv
import json

import pytest

from rlft.toy.model import SHIPPED, load_toy
from tests.conftest import compose_config, noise, run_cli

SMALL = [
    "epochs=2",
    "sample.batch_size=4",
    "sample.num_batches_per_epoch=1",
    "sample.num_steps=4",
    "train.batch_size=4",
    "train.gradient_accumulation_steps=1",
]


def test_the_shipped_toy_pipeline_loads_in_float32():
    components = load_toy()
    assert components.source == str(SHIPPED)
    for module in (components.unet, components.vae, components.text_encoder):
        assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in module.parameters())
    assert components.unet.config.sample_size * 4 == components.vae.config.sample_size == 32


def test_model_toy_composes_the_toy_world():
    cfg = compose_config(["~experiment", "model=toy"])
    assert cfg.model.components._target_ == "rlft.toy.model.load_toy"
    assert cfg.reward._target_ == "rlft.toy.rewards.ToyReward" and cfg.reward.aspect == "alignment"
    assert cfg.prompt._target_ == "rlft.toy.prompts.ToyPrompts"
    assert cfg.showcase.samples >= 256  # the measurement: at least 256 scored samples


def test_showcase_saves_the_same_prompts_before_and_after_and_leaves_training_alone(tmp_path):
    common = ["~experiment", "model=toy", *SMALL, "showcase.grid=6", "showcase.batch_size=4"]
    shown = run_cli([*common, "showcase.samples=6", f"output_root={tmp_path / 'with'}"], cwd=tmp_path)
    plain_run = run_cli([*common, "showcase.samples=0", f"output_root={tmp_path / 'without'}"], cwd=tmp_path)
    assert noise(shown) == noise(plain_run) == []  # no warning or library notice among the lines printed
    (run,) = (tmp_path / "with" / "runs").iterdir()
    before, after = (json.loads((run / "images" / f"{when}.json").read_text())["images"] for when in ("before", "after"))
    assert [r["prompt"] for r in before] == [r["prompt"] for r in after] and len(before) == 6
    assert (run / "images" / "before.png").is_file() and (run / "images" / "after.png").is_file()
    scores = json.loads((run / "showcase.json").read_text())
    # each image's caption carries its rewards, whose means over the grid (all 6 samples) are the scores
    assert sum(r["reward"] for r in after) / 6 == pytest.approx(scores["after"]["reward_mean"])
    assert sum(r["eval_rewards"]["toy_color"] for r in before) / 6 == pytest.approx(scores["before"]["eval_toy_color_mean"])
    assert all(f"reward {r['reward']:.3f}" in line for r, line in zip(after, (run / "images" / "after.txt").read_text().splitlines()))
    for when in ("before", "after"):
        assert set(scores[when]) == {"reward_mean", "eval_toy_color_mean", "eval_toy_shape_mean"}
        assert all(0.0 <= v <= 1.0 for v in scores[when].values())
    (plain,) = (tmp_path / "without" / "runs").iterdir()
    assert not (plain / "showcase.json").exists()

    def rewards(directory):
        with (directory / "metrics.csv").open() as f:
            return [(row["reward_mean"], row["approx_kl"], row["ratio"]) for row in csv.DictReader(f)]

    assert rewards(run) == rewards(plain)  # the showcase draws from its own streams

"""The toy world's exact rewards and prompts."""

import csv
import random
from dataclasses import replace

import numpy as np
import pytest

from rlft.errors import ConfigError
from rlft.toy import Scene, draw
from rlft.toy.prompts import ToyPrompts
from rlft.toy.rewards import ToyReward
from tests.conftest import FAST, run_cli

ASKED = Scene("circle", "red", "blue", (0.5, 0.5), 0.5)


def scores(image_scene: Scene, prompt: str = ASKED.caption, metadata: dict | None = None) -> dict[str, float]:
    images = draw(image_scene)[None]
    return {
        aspect: float(ToyReward(aspect).score_uint8(images, [prompt], [metadata or {}])[0])
        for aspect in ("color", "shape", "alignment")
    }


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        (ASKED, {"color": 1, "shape": 1, "alignment": 1}),
        (replace(ASKED, color="green"), {"color": 0, "shape": 1, "alignment": 0}),
        (replace(ASKED, shape="triangle"), {"color": 1, "shape": 0, "alignment": 0}),
        (replace(ASKED, background="yellow"), {"color": 1, "shape": 1, "alignment": 0}),
        (replace(ASKED, shape="square", color="blue", background="red"), {"color": 0, "shape": 0, "alignment": 0}),
    ],
    ids=["right", "wrong_color", "wrong_shape", "wrong_background", "all_wrong"],
)
def test_rewards_check_the_image_against_the_prompt(shown, expected):
    assert scores(shown) == expected


def test_metadata_takes_precedence_and_other_captions_are_refused():
    metadata = {"shape": "triangle", "color": "red", "background": "blue"}
    assert scores(ASKED, metadata=metadata)["shape"] == 0  # asked (via metadata) for a triangle
    with pytest.raises(ConfigError, match="use prompt=toy"):
        scores(ASKED, prompt="a photo of a cat")


def test_toy_prompts_carry_their_labels():
    prompts = ToyPrompts()
    assert len(prompts) == 3 * 6 * 5
    rng = random.Random(0)
    for _ in range(20):
        prompt, labels = prompts.sample(rng)
        assert prompt == f"a {labels['color']} {labels['shape']} on a {labels['background']} background"


def test_a_run_trains_on_alignment_and_watches_colour_and_shape(tmp_path):
    run_cli(
        [*FAST, "prompt=toy", "reward=toy_alignment", "eval_rewards=[toy_color,toy_shape]", f"output_root={tmp_path}"],
        cwd=tmp_path,
    )
    (metrics,) = tmp_path.glob("runs/*/metrics.csv")
    with metrics.open() as f:
        row = next(iter(csv.DictReader(f)))
    for key in ("reward_mean", "eval_toy_color_mean", "eval_toy_shape_mean"):
        assert 0.0 <= float(row[key]) <= 1.0
    assert np.isfinite(float(row["reward_std"]))

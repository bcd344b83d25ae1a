"""Learning, not just running: every algorithm raises the reward it is trained on.

DDPO, its score-function variant, TDPO and TDPO-R on the toy world, where the reward is colour
accuracy read exactly from the pixels (the last test). RWR and RWR-sparse lower that accuracy on
the toy (README, "The toy world": their samples drift from the data as they train on them), so
their tests stay on the tiny model with brightness as the reward: seeded runs whose margin is about
half to two thirds of the measured gain (mean of the last three epochs minus epoch 0); without
learning the epoch means wander by about 0.005. Measured on 2 CPU cores (seed 42):
- rwr (64 samples, beta 100 for a [0, 1] reward, 4 passes, lr 2e-3, 8 epochs): +0.019, 50 s;
- rwr_sparse (64 samples, top quarter kept, 4 passes, lr 2e-3, 10 epochs): +0.015, 32 s.
"""

import csv
import json

import pytest

from rlft.train import train
from tests.conftest import compose_config

pytestmark = pytest.mark.slow

RWR_SIZES = ["sample.num_batches_per_epoch=8", "train.batch_size=4", "train.gradient_accumulation_steps=1"]

RWR_CASES = {
    "rwr": (
        [*RWR_SIZES, "algorithm.temperature=100", "train.num_inner_epochs=4", "train.learning_rate=2e-3", "epochs=8"],
        0.01,
    ),
    "rwr_sparse": (
        [
            *RWR_SIZES,
            "algorithm.percentile=75",
            "train.num_inner_epochs=4",
            "train.learning_rate=2e-3",
            "epochs=10",
        ],
        0.01,
    ),
}


def rewards_of_run(tmp_path, overrides: list[str]) -> list[float]:
    cfg = compose_config(["reward=brightness", "epochs=12", f"output_root={tmp_path}", *overrides])
    train(cfg, tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open() as f:
        return [float(row["reward_mean"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("algorithm", sorted(RWR_CASES))
def test_rwr_raises_brightness(tmp_path, algorithm):
    overrides, margin = RWR_CASES[algorithm]
    rewards = rewards_of_run(tmp_path, [f"algorithm={algorithm}", *overrides])
    first, last = rewards[0], sum(rewards[-3:]) / 3
    assert last > first + margin, rewards


# The toy world: the reward is the accuracy itself, read exactly from the pixels. Each runs the toy
# demo (64 samples of 5 steps without guidance in groups of 4 per prompt; its first two steps
# trained, LoRA on the cross-attention) rewarded on colour alone, 15 epochs at lr 4e-3 (half the
# epochs of the 30 at lr 2e-3 these tests ran before, which cost 100-113 s for TDPO and TDPO-R).
TOY = ["~experiment", "model=toy", "reward=toy_color", "eval_rewards=[]", "epochs=15", "train.learning_rate=4e-3"]
TOY_CASES = {
    "ddpo": [],  # model=toy brings algorithm=ddpo_groups
    "ddpo_sf": ["algorithm=ddpo_sf", "algorithm.stat_min_count=4"],
    "tdpo": ["algorithm=tdpo", "algorithm.stat_min_count=4"],
    "tdpo_r": ["algorithm=tdpo_r_groups"],
}


@pytest.mark.parametrize("algorithm", sorted(TOY_CASES))
def test_the_toy_models_colour_accuracy_rises(tmp_path, algorithm):
    """The same 256 showcase prompts and seeds are read before the first update and after the last.
    Measured (one torch thread, two runs side by side, in-process): colour right 82.8% -> 90.6% for
    all four at seed 42 (+0.078); at seed 1, 82.8% -> 87.5% (tdpo, +0.047) and 86.7% (ddpo, +0.039).
    The 30 epochs at lr 2e-3 before reached 93.75% (ddpo, ddpo_sf) and 92.97% (tdpo, tdpo_r) at seed
    42 in about twice the time (tdpo at seed 1: 93.4%), with a margin of 0.05. The margin is under
    half the seed-42 gain and under the seed-1 ones; without learning the showcase is the same
    samples of the same model and its change exactly 0."""
    cfg = compose_config([*TOY, *TOY_CASES[algorithm], "showcase.grid=0", f"output_root={tmp_path}"])
    train(cfg, tmp_path / "run")
    shown = json.loads((tmp_path / "run" / "showcase.json").read_text())
    before, after = shown["before"]["reward_mean"], shown["after"]["reward_mean"]
    assert after > before + 0.03, shown

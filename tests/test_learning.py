"""Learning, not just running: every algorithm raises the accuracy of the shipped toy model
(model=toy), as read by the exact scorer (rlft/toy/world.py), not a proxy of it.

Each run starts from the default run (experiment=demo: DDPO sizes, prompt=toy, reward=toy_alignment)
and changes what its algorithm needs. The measurement is the run's showcase: the same SHOWCASE
prompts and seeds sampled before the first update and after the last, so that the difference is
paired image by image. Margins are set from measured runs (table below) at about half the measured
gain; a run that does not learn moves by a few points either way.

MEASURED
"""

import json

import pytest

from rlft.train import train
from tests.conftest import compose_config

SHOWCASE = ["showcase.samples=128", "showcase.grid=0", "showcase.batch_size=32"]

CASES: dict[str, tuple[list[str], float]] = {
    "ddpo": ([], 0.05),
    "ddpo_sf": ([], 0.05),
    "tdpo": ([], 0.05),
    "tdpo_r": (["algorithm.neuron_reset_freq=2"], 0.05),
    "rwr": ([], 0.05),
    "rwr_sparse": ([], 0.05),
}


def accuracy_before_and_after(tmp_path, overrides: list[str]) -> tuple[float, float]:
    cfg = compose_config(
        ["experiment=demo", "eval_rewards=[]", "sample.num_images_logged=0", *SHOWCASE]
        + [f"output_root={tmp_path}", *overrides]
    )
    train(cfg, tmp_path / "run")
    scores = json.loads((tmp_path / "run" / "showcase.json").read_text())
    return scores["before"]["reward_mean"], scores["after"]["reward_mean"]


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_algorithm_raises_toy_alignment_accuracy(tmp_path, algorithm):
    overrides, margin = CASES[algorithm]
    before, after = accuracy_before_and_after(tmp_path, [f"algorithm={algorithm}", *overrides])
    assert after > before + margin, (before, after)

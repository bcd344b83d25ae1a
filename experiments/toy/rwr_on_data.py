"""Is RWR-sparse's fall on the toy world its samples or its code? (README, "The toy world")

Runs RWR-sparse twice through the same sampling, reward and fine-tuning code: once on its own
samples, once with each sample's final latent replaced by the encoded image of a fresh world scene
with that sample's own labels (supervised fine-tuning on the world's data, the prompts and schedule
unchanged). Prints the showcase's colour accuracy (256 fixed prompts and seeds) before and after.

    python experiments/toy/rwr_on_data.py [OVERRIDES...]

The README's figures: no overrides (the defaults below: rounds of 1024 samples, the whole UNet
fine-tuned at lr 1e-4, every noise level, 6 rounds).
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from rlft.algorithms import FilterAndFinetune
from rlft.config import CONFIG_DIR
from rlft.pretrain import scene_images
from rlft.toy.world import ToyWorld
from rlft.train import train

DEFAULTS = [
    "experiment=overopt_ddpo",
    "algorithm=rwr_sparse",
    "epochs=6",
    "sample.batch_size=64",
    "sample.num_batches_per_epoch=16",
    "train.batch_size=32",
    "train.gradient_accumulation_steps=1",
    "train.learning_rate=1e-4",
    "train.timestep_window=[0,1]",
    "model.lora=null",
    "eval_rewards=[]",
    "showcase.grid=0",
]


class FilterAndFinetuneOnWorldImages(FilterAndFinetune):
    """RWR-sparse whose kept samples' final latents are swapped for encoded world images of the
    same labels (shape, colour, background) at a random position and size."""

    world = ToyWorld(0)

    def optimize(self, learner, trajectories, stream):
        vae = learner.policy.vae
        scenes = [
            self.world.placed(labels["shape"], labels["color"], labels["background"])
            for labels in trajectories.metadata
        ]
        pixels = scene_images(scenes, trajectories.images.shape[-1])
        with torch.no_grad():
            latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode() * vae.config.scaling_factor
        trajectories.chain[:, -1] = latents.to(trajectories.chain.dtype)
        return super().optimize(learner, trajectories, stream)


def main() -> None:
    overrides = [*DEFAULTS, *sys.argv[1:]]
    arms = {"own samples": [], "world images": [f"algorithm._target_={__name__}.FilterAndFinetuneOnWorldImages"]}
    for arm, extra in arms.items():
        with (
            tempfile.TemporaryDirectory() as root,
            initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"),
        ):
            cfg = compose(config_name="train", overrides=[*overrides, *extra, f"output_root={root}"])
            train(cfg, Path(root) / "run")
            shown = json.loads((Path(root) / "run" / "showcase.json").read_text())
        print(f"{arm}: {shown['before']['reward_mean']:.3f} -> {shown['after']['reward_mean']:.3f}", flush=True)


if __name__ == "__main__":
    main()

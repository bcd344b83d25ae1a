"""How much latent error does the VAE's decoder tolerate, shape by shape? (README, "The toy world")

Encodes 128 world images of each shape, adds Gaussian noise of a given standard deviation to their
(unit-variance) latents, decodes, and prints the fraction whose shape still reads back right. A
shape that fails at small noise is one the UNet must place exactly for the reader to see it.

    python experiments/toy/decoder_noise.py [PIPELINE_DIR|-]
"""

import sys

import numpy as np
import torch

from rlft.pretrain import scene_images
from rlft.rewards.base import to_uint8
from rlft.toy.model import load_toy
from rlft.toy.world import SHAPES, ToyWorld, read_scene

IMAGES = 128
SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.5)


@torch.no_grad()
def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "-"
    vae = load_toy(None if path == "-" else path).vae
    scale = vae.config.scaling_factor
    world = ToyWorld(5)
    for shape in SHAPES:
        scenes = [world.placed(shape, scene.color, scene.background) for scene in world.scenes(IMAGES)]
        latents = vae.encode(scene_images(scenes, vae.config.sample_size)).latent_dist.mode() * scale
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))  # one draw, scaled per level
        parts = []
        for sigma in SIGMAS:
            decoded = vae.decode((latents + sigma * noise) / scale).sample
            right = np.mean([read_scene(image)[0] == shape for image in to_uint8((decoded + 1) / 2)])
            parts.append(f"noise {sigma}: {right:.2f}")
        print(f"{shape:>8}: " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    main()

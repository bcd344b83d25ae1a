"""Do images of one prompt disagree? (README, "The toy world")

Samples 8 images for each of 32 toy prompts at the given sampler settings and prints, for colour,
background, shape and everything, the mean success and the mean within-prompt variance p(1-p):
per-prompt advantages can only learn from that variance (a prompt that gets the same answer every
time gives them nothing to compare). A second line gives the shapes asked for against the shapes
read back (which shape the model's errors fall on).

    python experiments/toy/prompt_contrast.py [PIPELINE_DIR|-] STEPS,GUIDANCE[,ETA] ...   (e.g. - 10,5 5,1 5,1,0)

ETA defaults to 1 (DDPO's sampler); 0 is deterministic DDIM.
"""

import random
import sys
from collections import Counter

import numpy as np
import torch

from rlft.kernels import DDIMKernel
from rlft.policy import Policy
from rlft.rewards.base import to_uint8
from rlft.streams import RandomStream
from rlft.toy.model import load_toy
from rlft.toy.prompts import ToyPrompts
from rlft.toy.world import read_scene

PROMPTS, IMAGES = 32, 8
ASPECTS = {
    "colour": lambda read, label: read[1] == label["color"],
    "background": lambda read, label: read[2] == label["background"],
    "shape": lambda read, label: read[0] == label["shape"],
    "all": lambda read, label: read == (label["shape"], label["color"], label["background"]),
}


@torch.no_grad()
def main() -> None:
    path, *settings = sys.argv[1:]
    components = load_toy(None if path == "-" else path)
    source, rng = ToyPrompts(), random.Random(0)
    chosen = [rng.randrange(len(source.prompts)) for _ in range(PROMPTS)]
    prompts = [source.prompts[i] for i in chosen for _ in range(IMAGES)]
    labels = [source.labels[i] for i in chosen for _ in range(IMAGES)]
    embeds = Policy(components, None).encode_prompts(prompts)
    for setting in settings:
        steps, guidance, *rest = setting.split(",")
        steps, guidance, eta = int(steps), float(guidance), float(rest[0]) if rest else 1.0
        policy = Policy(components, None, kernel=DDIMKernel(eta))
        schedule = policy.schedule(steps)
        stream = RandomStream(0)
        x = stream.normal((len(prompts), *policy.latent_shape))
        for j in range(steps):
            index = torch.full((len(x),), j)
            x = policy.transition(x, index, schedule, embeds, guidance, noise=stream.normal(x.shape)).sample
        reads = [read_scene(image) for image in to_uint8(policy.decode(x))]
        parts = []
        for aspect, right in ASPECTS.items():
            success = np.array([right(r, label) for r, label in zip(reads, labels, strict=True)], float)
            p = success.reshape(PROMPTS, IMAGES).mean(1)
            parts.append(f"{aspect} {p.mean():.3f} (within-prompt variance {np.mean(p * (1 - p)):.3f})")
        print(f"{steps} steps, guidance {guidance}, eta {eta}: " + ", ".join(parts), flush=True)
        confusion = Counter((label["shape"], read[0]) for read, label in zip(reads, labels, strict=True))
        print("  asked -> read: " + ", ".join(f"{a} -> {r} {n}" for (a, r), n in sorted(confusion.items())))


if __name__ == "__main__":
    main()

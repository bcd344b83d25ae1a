"""When is a toy image's shape decided? (README, "The toy world")

For 16 square prompts, runs one chain each; from the state after k of the 10 steps it resamples the
rest 8 times and reads the shapes back. Within-branch variance of success is what the remaining
steps' noise still decides; between-branch variance is what the first k steps fixed.

    python experiments/toy/when_decided.py [PIPELINE_DIR]
"""

import random
import sys

import numpy as np
import torch

from rlft.policy import Policy
from rlft.rewards.base import to_uint8
from rlft.streams import RandomStream
from rlft.toy.model import load_toy
from rlft.toy.prompts import ToyPrompts
from rlft.toy.world import read_scene

CHAINS, BRANCHES = 16, 8


@torch.no_grad()
def main() -> None:
    policy = Policy(load_toy(sys.argv[1] if len(sys.argv) > 1 else None), None)
    source = ToyPrompts()
    squares = [
        prompt for prompt, labels in zip(source.prompts, source.labels, strict=True) if labels["shape"] == "square"
    ]
    rng = random.Random(0)
    embeds = policy.encode_prompts([squares[rng.randrange(len(squares))] for _ in range(CHAINS)])
    schedule = policy.schedule(10)

    def step(x, j, embeds, stream):
        index = torch.full((len(x),), j)
        return policy.transition(x, index, schedule, embeds, 5.0, noise=stream.normal(x.shape)).sample

    stream = RandomStream(0)
    x = stream.normal((CHAINS, *policy.latent_shape))
    states = [x]
    for j in range(10):
        x = step(x, j, embeds, stream)
        states.append(x)
    for k in range(0, 10, 2):
        x = states[k].repeat(BRANCHES, 1, 1, 1)
        branch_stream = RandomStream(100 + k)
        for j in range(k, 10):
            x = step(x, j, embeds.repeat(BRANCHES, 1, 1), branch_stream)
        read = [read_scene(image)[0] == "square" for image in to_uint8(policy.decode(x))]
        success = np.asarray(read, dtype=float).reshape(BRANCHES, CHAINS).mean(0)
        print(
            f"after {k} steps: success {success.mean():.3f}, still open (within-branch variance) "
            f"{np.mean(success * (1 - success)):.3f}, fixed (between-branch) {success.var():.3f}"
        )


if __name__ == "__main__":
    main()

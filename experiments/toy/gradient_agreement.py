"""How much signal is in a DDPO gradient on the toy model? (README, "The toy world")

Draws two independent sets of samples (groups of 8 per prompt, per-prompt advantages), computes
the score-function DDPO gradient of each over chosen windows of the sampling chain, and prints the
cosine between the two estimates for the whole UNet and for its cross-attention: near 0, the
estimate is noise; near 1, signal.

    python experiments/toy/gradient_agreement.py [PIPELINE_DIR] [SAMPLES]
"""

import itertools
import random
import sys

import torch

from rlft.algorithms.stat_tracker import PerPromptStatTracker
from rlft.policy import Policy
from rlft.rewards import RewardRunner
from rlft.sampler import rollout
from rlft.toy.model import load_toy
from rlft.toy.prompts import ToyPrompts
from rlft.toy.rewards import ToyReward
from rlft.trajectories import rescore, training_batches

GROUP = 8
WINDOWS = {"all steps": range(10), "steps 0-2": range(3), "steps 3-5": range(3, 6), "steps 6-9": range(6, 10)}
PARTS = {
    "whole UNet": lambda name: True,
    "cross-attention": lambda name: "attn2" in name,
    "cross-attention k, v": lambda name: "attn2.to_k" in name or "attn2.to_v" in name,
}


def gradients(policy: Policy, seed: int, samples: int) -> dict[str, torch.Tensor]:
    runner = RewardRunner({"train": ToyReward("alignment")})
    trajectories = rollout(
        policy, ToyPrompts(), runner, batch_size=64, num_batches=samples // 64, num_steps=10, guidance_scale=5.0,
        eta=1.0, generator=torch.Generator().manual_seed(seed), rng=random.Random(seed), images_per_prompt=GROUP,
    )  # fmt: skip
    rewards = runner.collect()["train"].numpy()
    advantages = PerPromptStatTracker(16, GROUP).update(trajectories.prompts, rewards)
    trajectories.advantages = torch.as_tensor(advantages, dtype=torch.float32)
    params = policy.trainable_parameters()
    result = {}
    for name, window in WINDOWS.items():
        for param in params:
            param.grad = None
        for batch in training_batches(trajectories, 32, len(window), torch.Generator().manual_seed(0), window):
            for j in range(len(window)):
                step = batch.column(j)
                (-(step.advantages * rescore(policy, step, 5.0, 1.0)).sum() / samples).backward()
        result[name] = torch.cat([param.grad.flatten() for param in params])
    return result


def main() -> None:
    policy = Policy(load_toy(sys.argv[1] if len(sys.argv) > 1 else None), None)
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    names = [name for name, param in policy.unet.named_parameters() if param.requires_grad]
    offsets = list(itertools.accumulate([0] + [p.numel() for p in policy.trainable_parameters()]))
    first, second = gradients(policy, 10, samples), gradients(policy, 11, samples)
    for window in WINDOWS:
        for part, chosen in PARTS.items():
            pieces = [slice(offsets[i], offsets[i + 1]) for i, name in enumerate(names) if chosen(name)]
            a = torch.cat([first[window][piece] for piece in pieces])
            b = torch.cat([second[window][piece] for piece in pieces])
            cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
            print(f"{window:10s} {part:22s} cosine {cosine:+.3f}  norm {a.norm():.4f}")


if __name__ == "__main__":
    main()

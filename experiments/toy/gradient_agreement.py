"""How much signal is in a DDPO gradient on the toy model? (README, "The toy world")

Draws two independent sets of samples (groups of 8 per prompt, per-prompt advantages), computes
the score-function DDPO gradient of each over chosen windows of the sampling chain, and prints the
cosine between the two estimates for the whole UNet and for its cross-attention: near 0, the
estimate is noise; near 1, signal.

    python experiments/toy/gradient_agreement.py [PIPELINE_DIR|-] [SAMPLES] [STEPS] [GUIDANCE] [REWARD]

(REWARD: alignment, the default, color or shape: the toy reward the advantages come from.)
(`-`: the shipped model.) The README's figures: `- 256 5 1` (the toy demo's sampler settings).
"""

import itertools
import random
import sys

import torch

from rlft.algorithms.stat_tracker import PerPromptStatTracker
from rlft.policy import Policy
from rlft.rewards import RewardRunner
from rlft.sampler import rollout
from rlft.streams import RandomStream
from rlft.toy.model import load_toy
from rlft.toy.prompts import ToyPrompts
from rlft.toy.rewards import ToyReward
from rlft.trajectories import rescore, training_batches

GROUP = 8
PARTS = {
    "whole UNet": lambda name: True,
    "cross-attention": lambda name: "attn2" in name,
    "cross-attention k, v": lambda name: "attn2.to_k" in name or "attn2.to_v" in name,
}


def windows(steps: int) -> dict[str, range]:
    """The whole chain, each of its first three steps, and the rest."""
    return {
        "all steps": range(steps),
        **{f"step {k}": range(k, k + 1) for k in range(min(3, steps))},
        **({f"steps 3-{steps - 1}": range(3, steps)} if steps > 3 else {}),
    }


def gradients(
    policy: Policy, seed: int, samples: int, steps: int, guidance: float, reward: str
) -> dict[str, torch.Tensor]:
    runner = RewardRunner({"train": ToyReward(reward)})
    trajectories = rollout(
        policy, ToyPrompts(), runner, batch_size=64, num_batches=samples // 64, num_steps=steps, guidance_scale=guidance,
        stream=RandomStream(seed), rng=random.Random(seed), images_per_prompt=GROUP,
    )  # fmt: skip
    rewards = runner.collect()["train"].numpy()
    advantages = PerPromptStatTracker(16, GROUP).update(trajectories.prompts, rewards)
    trajectories.advantages = torch.as_tensor(advantages, dtype=torch.float32)
    params = policy.trainable_parameters()
    result = {}
    for name, window in windows(steps).items():
        for param in params:
            param.grad = None
        for batch in training_batches(trajectories, 32, len(window), torch.Generator().manual_seed(0), window):
            for j in range(len(window)):
                step = batch.column(j)
                (-(step.advantages * rescore(policy, step, guidance, 1.0)).sum() / samples).backward()
        result[name] = torch.cat([param.grad.flatten() for param in params])
    return result


def main() -> None:
    args = sys.argv[1:]
    policy = Policy(load_toy(args[0] if args and args[0] != "-" else None), None)
    samples = int(args[1]) if len(args) > 1 else 256
    steps = int(args[2]) if len(args) > 2 else 10
    guidance = float(args[3]) if len(args) > 3 else 5.0
    reward = args[4] if len(args) > 4 else "alignment"
    names = [name for name, param in policy.unet.named_parameters() if param.requires_grad]
    offsets = list(itertools.accumulate([0] + [p.numel() for p in policy.trainable_parameters()]))
    first, second = (gradients(policy, seed, samples, steps, guidance, reward) for seed in (10, 11))
    for window in windows(steps):
        for part, chosen in PARTS.items():
            pieces = [slice(offsets[i], offsets[i + 1]) for i, name in enumerate(names) if chosen(name)]
            a = torch.cat([first[window][piece] for piece in pieces])
            b = torch.cat([second[window][piece] for piece in pieces])
            cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
            print(f"{window:10s} {part:22s} cosine {cosine:+.3f}  norm {a.norm():.4f}")


if __name__ == "__main__":
    main()

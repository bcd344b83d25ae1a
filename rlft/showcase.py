"""Before/after showcase: the same prompts and noise sampled before the first update and after the
last one, scored by every reward of the run and saved as grids captioned with prompt and rewards,
with a .json beside each listing every image of the grid (the epochs' format, rlft/images.py).

Fixed prompts and seeds make the two grids comparable image by image, and a few hundred scored
samples (the toy world's exact reader) turn "it learned" into a measured difference.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from omegaconf import DictConfig

from rlft.families.base import DiffusionPolicy
from rlft.images import image_records, record_caption, save_image_grid, write_json_atomically
from rlft.prompts import PromptSource
from rlft.rewards import RewardRunner
from rlft.sampler import rollout
from rlft.streams import RandomStream


def showcase(
    policy: DiffusionPolicy,
    prompts: PromptSource,
    rewards: RewardRunner,
    settings: DictConfig,
    sample: DictConfig,
    path: Path,
) -> dict[str, float]:
    """Sample `settings.samples` images with seed `settings.seed` at the run's sampler settings, save
    the first `settings.grid` of them to `path` and return the mean of each reward.

    The run's random streams are left untouched, so a run with a showcase trains exactly like one
    without (and a resumed run like an uninterrupted one).
    """
    batch_size = min(settings.batch_size, settings.samples)
    was_training = policy.training
    policy.eval()
    with torch.random.fork_rng(devices=[]):
        trajectories = rollout(
            policy,
            prompts,
            rewards,
            batch_size=batch_size,
            num_batches=-(-settings.samples // batch_size),
            num_steps=sample.num_steps,
            guidance_scale=sample.guidance_scale,
            stream=RandomStream(settings.seed),
            rng=random.Random(settings.seed),
        )
    scores = rewards.collect()
    policy.train(was_training)
    count = min(settings.grid, len(trajectories))
    if count:
        # the run's reward ("train"; a runner without one, as pretraining's, leads with its first)
        main = "train" if "train" in scores else next(iter(scores))
        evals = {name.removeprefix("eval_"): values.tolist() for name, values in scores.items() if name != main}
        records = image_records(trajectories.prompts[:count], scores[main].tolist(), evals)
        save_image_grid(trajectories.images[:count], [record_caption(r) for r in records], path)
        write_json_atomically({"showcase": path.stem, "images": records}, path.with_suffix(".json"))
    # Over exactly `samples` images (the last batch may have sampled more), of those each reward scored
    # (NaN: not scored); a reward that scored none of them has no mean and is left out.
    means = {}
    for name, values in scores.items():
        shown = values[: settings.samples].float()
        if torch.isnan(shown).all():
            continue
        means["reward_mean" if name == "train" else f"{name}_mean"] = (
            shown.nanmean() if torch.isnan(shown).any() else shown.mean()
        ).item()
    return means

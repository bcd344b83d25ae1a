"""Rollout: sample prompts, run the policy's kernel for T steps, keep trajectories and log-probs."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from rlft.errors import ConfigError
from rlft.families.base import DiffusionPolicy, concatenate
from rlft.prompts import PromptSource
from rlft.rewards import RewardRunner
from rlft.streams import RandomStream
from rlft.trajectories import Trajectories
from rlft.xla import sync


@torch.no_grad()
def rollout(
    policy: DiffusionPolicy,
    prompts: PromptSource,
    rewards: RewardRunner,
    *,
    batch_size: int,
    num_batches: int,
    num_steps: int,
    guidance_scale: float,
    stream: RandomStream,
    rng: random.Random,
    progress: bool = False,
    description: str = "sampling",
    state_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reference: bool = False,
    trajectory_dtype: torch.dtype = torch.float32,
    images_per_prompt: int = 1,
    same_noise_per_group: bool = False,
) -> Trajectories:
    """Sample `num_batches` batches; each decoded batch goes to `rewards` while the next one samples.
    `stream` draws the initial noise and every step's noise; `rng` the prompts.

    `images_per_prompt` = k draws a prompt for every k consecutive samples (groups, so that
    per-prompt advantages compare images of the same prompt from the first epoch on). With
    `same_noise_per_group`, the k images of a group also start from one x_T (DanceGRPO's
    init_same_noise), drawn from `stream` at the group's first sample, so that a group cut by a batch
    boundary keeps its noise.

    With `state_encoder`, every state x_t (pure noise included) is decoded and encoded before its
    step (TDPO's critic input). With `reference`, the frozen reference policy also scores each
    sampled action (KL regularization). `trajectory_dtype`: the dtype the states are kept in.
    """
    device = policy.device
    schedule = policy.schedule(num_steps).to(device)
    levels = schedule.expand(batch_size, -1)
    # Each step's index as its own tensor, transferred before the loop: on XLA a graph input, so
    # every step runs the same compiled graph (a Python index would be a constant per step).
    step_indices = [torch.full((batch_size,), j, dtype=torch.long).to(device) for j in range(num_steps)]
    bar = tqdm(total=num_batches * num_steps, desc=description, disable=not progress, leave=False, unit="step")
    keys = ("prompts", "metadata", "embeds", "chain", "log_probs", "images", "features", "reference_log_probs")
    parts: dict[str, list] = {key: [] for key in keys}
    total = batch_size * num_batches
    everything = draw_prompts(prompts, rng, total, images_per_prompt)
    for start in range(0, total, batch_size):
        drawn = everything[start : start + batch_size]
        batch_prompts = [prompt for prompt, _ in drawn]
        embeds = policy.encode_prompts(batch_prompts)
        if same_noise_per_group:
            rows = []
            for index in range(start, start + batch_size):
                if index % images_per_prompt == 0:  # a group's first sample draws the group's x_T
                    shared = stream.normal((1, *policy.latent_shape))
                rows.append(shared)
            x = torch.cat(rows).to(device)
        else:
            x = stream.normal((batch_size, *policy.latent_shape), device=device)
        # Every later state takes this dtype (a kernel's step returns its sample's dtype, and scores
        # the action after that rounding), so the chain is stored in it.
        x = (x * policy.initial_noise_scale).to(trajectory_dtype)
        chain, log_probs, features, reference_log_probs = [x], [], [], []
        for j in step_indices:
            if state_encoder is not None:
                features.append(state_encoder(policy.decode(x)))
            state = x
            noise = stream.normal(state.shape, device=device)
            step = policy.transition(state, j, levels, embeds, guidance_scale, noise=noise)
            x = step.sample
            if reference:
                scored = policy.transition(state, j, levels, embeds, guidance_scale, next_latents=x, reference=True)
                reference_log_probs.append(scored.log_prob)
            chain.append(x)
            # (a deterministic step, the Euler kernel's, has no log-prob: NaN, which no algorithm that
            # needs log-probs accepts; rlft/algorithms/base.py refuses the pairing first)
            log_probs.append(
                step.log_prob if step.log_prob is not None else torch.full_like(j, torch.nan, dtype=torch.float32)
            )
            sync(device)  # one sampler step per XLA graph
            bar.update()
        images = policy.decode(x).cpu()
        rewards.submit(images, batch_prompts, [meta for _, meta in drawn])
        parts["prompts"] += batch_prompts
        parts["metadata"] += [meta for _, meta in drawn]
        parts["embeds"].append(embeds)
        parts["chain"].append(torch.stack(chain, dim=1))
        parts["log_probs"].append(torch.stack(log_probs, dim=1))
        parts["images"].append(images)
        if features:
            parts["features"].append(torch.stack(features, dim=1))
        if reference_log_probs:
            parts["reference_log_probs"].append(torch.stack(reference_log_probs, dim=1))
    bar.close()
    return Trajectories(
        prompts=parts["prompts"],
        metadata=parts["metadata"],
        prompt_embeds=concatenate(parts["embeds"]),
        schedule=schedule.expand(total, -1).clone(),
        chain=torch.cat(parts["chain"]),
        log_probs=torch.cat(parts["log_probs"]),
        images=torch.cat(parts["images"]),
        state_features=torch.cat(parts["features"]) if parts["features"] else None,
        reference_log_probs=torch.cat(parts["reference_log_probs"]) if parts["reference_log_probs"] else None,
    )


def group_problem(count: int, images_per_prompt: int) -> str | None:
    """Why `images_per_prompt` cannot group `count` samples per process and epoch, or None."""
    if images_per_prompt >= 1 and count % images_per_prompt == 0:
        return None
    return (
        f"sample.images_per_prompt={images_per_prompt} must be at least 1 and divide the samples each "
        f"process draws per epoch (sample.batch_size x sample.num_batches_per_epoch = {count})"
    )


def draw_prompts(
    prompts: PromptSource, rng: random.Random, count: int, images_per_prompt: int
) -> list[tuple[str, dict]]:
    """`count` (prompt, metadata) pairs: a fresh draw for every `images_per_prompt` in a row."""
    problem = group_problem(count, images_per_prompt)
    if problem:
        raise ConfigError(problem)
    groups = [prompts.sample(rng) for _ in range(count // images_per_prompt)]
    return [(prompt, dict(metadata)) for prompt, metadata in groups for _ in range(images_per_prompt)]

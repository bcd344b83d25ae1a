"""The data that flows between the phases of one RL epoch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class Trajectories:
    """One process's samples of one epoch. N samples, T sampler steps.

    `chain` holds x_T ... x_0, so `latents` (state before each step) and `next_latents` (the action
    taken) are views of one tensor rather than two copies.
    """

    prompts: list[str]
    metadata: list[dict]
    prompt_embeds: torch.Tensor  # (N, L, D)
    timesteps: torch.Tensor  # (N, T) long
    chain: torch.Tensor  # (N, T + 1, C, H, W)
    log_probs: torch.Tensor  # (N, T), behaviour log-probs of the stored actions
    images: torch.Tensor  # (N, 3, H', W') in [0, 1], on the CPU
    rewards: torch.Tensor | None = None  # (N,) training reward of the local samples
    advantages: torch.Tensor | None = None  # (N,) local slice of the global advantages
    global_rewards: torch.Tensor | None = None  # (N * ranks,) training reward of every rank, rank order
    eval_rewards: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def latents(self) -> torch.Tensor:
        return self.chain[:, :-1]

    @property
    def next_latents(self) -> torch.Tensor:
        return self.chain[:, 1:]

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[1]


@dataclass
class TrainingBatch:
    """A minibatch for the optimize phase, with time already permuted per sample."""

    prompt_embeds: torch.Tensor  # (B, L, D)
    timesteps: torch.Tensor  # (B, K)
    latents: torch.Tensor  # (B, K, C, H, W)
    next_latents: torch.Tensor  # (B, K, C, H, W)
    log_probs: torch.Tensor  # (B, K)
    advantages: torch.Tensor  # (B,)

    def __getitem__(self, index) -> TrainingBatch:
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})


def training_batches(
    trajectories: Trajectories, batch_size: int, num_timesteps: int, generator: torch.Generator
) -> list[TrainingBatch]:
    """Shuffle samples, shuffle time independently per sample, keep K columns, cut minibatches."""
    n, steps = len(trajectories), trajectories.num_steps
    device = trajectories.chain.device
    order = torch.randperm(n, generator=generator).to(device)
    time_order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(n)]).to(device)
    time_order = time_order[:, :num_timesteps]
    rows = order[:, None]
    columns = time_order[order]

    def take(per_step: torch.Tensor) -> torch.Tensor:
        return per_step[rows, columns]

    everything = TrainingBatch(
        prompt_embeds=trajectories.prompt_embeds[order],
        timesteps=take(trajectories.timesteps),
        latents=take(trajectories.latents),
        next_latents=take(trajectories.next_latents),
        log_probs=take(trajectories.log_probs),
        advantages=trajectories.advantages[order],
    )
    return [everything[slice(start, start + batch_size)] for start in range(0, n, batch_size)]

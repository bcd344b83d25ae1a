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
    state_features: torch.Tensor | None = None  # (N, T, D) embeddings of the decoded states (critic input)
    reference_log_probs: torch.Tensor | None = None  # (N, T) the reference policy's log-probs (KL)
    rewards: torch.Tensor | None = None  # (N,) training reward of the local samples
    advantages: torch.Tensor | None = None  # (N,) or (N, T): local rows of the global advantages
    values: torch.Tensor | None = None  # (N, T) critic values at sampling time
    returns: torch.Tensor | None = None  # (N, T) critic targets
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
    advantages: torch.Tensor  # (B,) or (B, K)
    state_features: torch.Tensor | None = None  # (B, K, D)
    values: torch.Tensor | None = None  # (B, K)
    returns: torch.Tensor | None = None  # (B, K)

    def __getitem__(self, index) -> TrainingBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{name: v[index] for name, v in values.items() if v is not None})


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

    def take(per_step: torch.Tensor | None) -> torch.Tensor | None:
        return None if per_step is None else per_step[rows, columns]

    advantages = trajectories.advantages
    everything = TrainingBatch(
        prompt_embeds=trajectories.prompt_embeds[order],
        timesteps=take(trajectories.timesteps),
        latents=take(trajectories.latents),
        next_latents=take(trajectories.next_latents),
        log_probs=take(trajectories.log_probs),
        advantages=take(advantages) if advantages.ndim == 2 else advantages[order],
        state_features=take(trajectories.state_features),
        values=take(trajectories.values),
        returns=take(trajectories.returns),
    )
    return [everything[slice(start, start + batch_size)] for start in range(0, n, batch_size)]


def rescore(policy, batch: TrainingBatch, column: int, guidance_scale: float, eta: float) -> torch.Tensor:
    """The current policy's log-prob (B,) of the stored actions in one timestep column of a batch."""
    _, log_prob = policy.step(
        batch.latents[:, column],
        batch.timesteps[:, column],
        batch.prompt_embeds,
        guidance_scale,
        eta,
        next_latents=batch.next_latents[:, column],
    )
    return log_prob

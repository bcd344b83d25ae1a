"""The data that flows between the phases of one RL epoch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from rlft.families.base import Conditioning
from rlft.families.conditioning import TextConditioning
from rlft.kernels.base import Transition
from rlft.streams import RandomStream
from rlft.xla import is_xla


@dataclass
class Trajectories:
    """One process's samples of one epoch. N samples, T sampler steps.

    `chain` holds x_T ... x_0, so `latents` (state before each step) and `next_latents` (the action
    taken) are views of one tensor rather than two copies. `schedule` holds each chain's T + 1
    levels (the policy's `schedule`: DDIM timesteps, flow noise levels), so that step j of a stored
    chain, from level j to level j + 1, is re-scored as it was sampled.
    """

    prompts: list[str]
    metadata: list[dict]
    prompt_embeds: Conditioning  # (N, L, D) hidden states, or a TextConditioning
    schedule: torch.Tensor  # (N, T + 1)
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
        return self.schedule.shape[1] - 1

    def select(self, rows: torch.Tensor) -> Trajectories:
        """The samples at `rows` (int64 indices), in that order; global_rewards (every rank's) stay whole."""
        chosen = rows.tolist()
        per_sample = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "global_rewards" or value is None:
                continue
            if isinstance(value, list):
                per_sample[f.name] = [value[i] for i in chosen]
            elif isinstance(value, dict):
                per_sample[f.name] = {k: v[rows.to(v.device)] for k, v in value.items()}
            elif isinstance(value, TextConditioning):
                per_sample[f.name] = value.index_select(rows)
            else:
                per_sample[f.name] = value[rows.to(value.device)]
        return replace(self, **per_sample)


@dataclass
class TrainingBatch:
    """A minibatch for the optimize phase, with time already permuted per sample."""

    prompt_embeds: Conditioning  # (B, L, D) or a TextConditioning
    schedule: torch.Tensor  # (B, T + 1)
    step_indices: torch.Tensor  # (B, K) int64: the sampler steps of the K columns
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

    def column(self, j: int) -> TimestepBatch:
        """The batch's j-th timestep column (one training micro-step)."""
        # On XLA the column index goes in as a tensor (a graph input): as a Python constant it
        # would make every column's forward and backward a graph of its own to compile.
        index = torch.tensor([j]).to(self.latents.device) if is_xla(self.latents.device) else None

        def pick(per_step: torch.Tensor | None) -> torch.Tensor | None:
            if per_step is None:
                return None
            return per_step[:, j] if index is None else per_step.index_select(1, index).squeeze(1)

        return TimestepBatch(
            prompt_embeds=self.prompt_embeds,
            schedule=self.schedule,
            step_index=pick(self.step_indices),
            latents=pick(self.latents),
            next_latents=pick(self.next_latents),
            log_probs=pick(self.log_probs),
            advantages=pick(self.advantages) if self.advantages.ndim == 2 else self.advantages,
            state_features=pick(self.state_features),
            values=pick(self.values),
            returns=pick(self.returns),
        )


@dataclass
class TimestepBatch:
    """One timestep column of a TrainingBatch: every field is per sample."""

    prompt_embeds: Conditioning  # (B, L, D) or a TextConditioning
    schedule: torch.Tensor  # (B, T + 1)
    step_index: torch.Tensor  # (B,) int64
    latents: torch.Tensor  # (B, C, H, W)
    next_latents: torch.Tensor  # (B, C, H, W)
    log_probs: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,)
    state_features: torch.Tensor | None = None  # (B, D)
    values: torch.Tensor | None = None  # (B,)
    returns: torch.Tensor | None = None  # (B,)


def trained_steps(num_steps: int, timestep_fraction: float, window: tuple[float, float]) -> tuple[range, int]:
    """The sampler steps training draws from (`window`: fractions of the chain, 0 = the first,
    noisiest step) and K, how many of them each sample trains on (`timestep_fraction` of them)."""
    start = min(round(window[0] * num_steps), num_steps - 1)  # at least the last step
    stop = max(round(window[1] * num_steps), start + 1)
    steps = range(start, stop)
    return steps, max(1, int(len(steps) * timestep_fraction))


def training_batches(
    trajectories: Trajectories,
    batch_size: int,
    num_timesteps: int,
    stream: RandomStream,
    steps: range | None = None,
) -> list[TrainingBatch]:
    """Shuffle samples, shuffle time independently per sample, keep K columns, cut minibatches.
    `steps`: the sampler steps to draw the columns from (all of them by default)."""
    n = len(trajectories)
    steps = range(trajectories.num_steps) if steps is None else steps
    device = trajectories.chain.device
    order = stream.permutation(n, device)
    time_order = torch.stack([stream.permutation(len(steps)) for _ in range(n)]) + steps.start
    time_order = time_order[:, :num_timesteps].to(device)
    rows = order[:, None]
    columns = time_order[order]

    def take(per_step: torch.Tensor | None) -> torch.Tensor | None:
        return None if per_step is None else per_step[rows, columns]

    advantages = trajectories.advantages
    everything = TrainingBatch(
        prompt_embeds=trajectories.prompt_embeds[order],
        schedule=trajectories.schedule[order],
        step_indices=columns,
        latents=take(trajectories.latents),
        next_latents=take(trajectories.next_latents),
        log_probs=take(trajectories.log_probs),
        advantages=take(advantages) if advantages.ndim == 2 else advantages[order],
        state_features=take(trajectories.state_features),
        values=take(trajectories.values),
        returns=take(trajectories.returns),
    )
    return [everything[slice(start, start + batch_size)] for start in range(0, n, batch_size)]


def transition_of(policy, step: TimestepBatch, guidance_scale: float, reference: bool = False) -> Transition:
    """The policy's kernel on the stored actions of one timestep column: their log-prob (B,), the
    step's mean and std, from the trained weights or (`reference`) the base model's."""
    return policy.transition(
        step.latents,
        step.step_index,
        step.schedule,
        step.prompt_embeds,
        guidance_scale,
        next_latents=step.next_latents,
        reference=reference,
    )


def rescore(policy, step: TimestepBatch, guidance_scale: float) -> torch.Tensor:
    """The current policy's log-prob (B,) of the stored actions of one timestep column."""
    return transition_of(policy, step, guidance_scale).log_prob

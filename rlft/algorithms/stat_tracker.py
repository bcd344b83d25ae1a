"""Per-prompt reward normalization (docs/algorithms.md#per-prompt-stat-tracking).

Each prompt keeps a FIFO buffer of its latest rewards. A prompt with fewer than `min_count`
buffered rewards is normalized with the whole batch's statistics instead. TDPO's per-prompt
running moments (docs/algorithms.md#reward-preprocessing-and-running-moments) are the same
object, in "norm" or "scaling" mode.
"""

from __future__ import annotations

from collections import deque

import numpy as np

EPS = 1e-6


class PerPromptStatTracker:
    def __init__(self, buffer_size: int, min_count: int, mode: str = "norm"):
        if mode not in ("norm", "scaling"):
            raise ValueError(f"mode must be 'norm' or 'scaling', not {mode!r}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.mode = mode
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        """Append this epoch's rewards to their prompts' buffers; return (r - mu) / (sigma + eps)
        ("norm") or r / (sigma + eps) ("scaling")."""
        rewards = np.asarray(rewards, dtype=np.float64)
        prompts_array = np.asarray(prompts, dtype=object)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):  # unique, in first-seen order
            mask = prompts_array == prompt
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mask].tolist())
            reference = rewards if len(buffer) < self.min_count else np.asarray(buffer)
            centre = reference.mean() if self.mode == "norm" else 0.0
            advantages[mask] = (rewards[mask] - centre) / (reference.std() + EPS)
        return advantages

    def state_dict(self) -> dict:
        return {"buffers": {prompt: list(buffer) for prompt, buffer in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {p: deque(values, maxlen=self.buffer_size) for p, values in state["buffers"].items()}

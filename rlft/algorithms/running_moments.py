"""Global running mean and standard deviation of rewards
(docs/algorithms.md#reward-preprocessing-and-running-moments).

Chan et al.'s parallel update merges each batch into the running moments; the standard deviation
is the unbiased one of everything seen so far.
"""

from __future__ import annotations

import math

import numpy as np


class RunningMoments:
    def __init__(self):
        self.mean = 0.0
        self.var = 1.0
        self.count = 1e-24  # so the first batch replaces the prior entirely
        self.std = 1.0

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        batch_mean, batch_var, n = values.mean(), values.var(), len(values)
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.std = math.sqrt(self.var * total / (total - 1)) if total > 1 else math.sqrt(self.var)
        self.count = total

    def normalize(self, values: np.ndarray, mode: str) -> np.ndarray:
        """Update with the batch, then (r - mean) / (std + 1e-8) ("norm") or r / (std + 1e-8) ("scaling")."""
        self.update(values)
        centre = self.mean if mode == "norm" else 0.0
        return (np.asarray(values, dtype=np.float64) - centre) / (self.std + 1e-8)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count, self.std = state["mean"], state["var"], state["count"], state["std"]

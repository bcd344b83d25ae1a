"""Cheap programmatic rewards for learning tests and smoke runs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rlft.errors import ConfigError
from rlft.rewards.base import Reward


class Brightness(Reward):
    """Mean pixel intensity in [0, 1], optionally of one channel ("red", "green", "blue")."""

    name = "brightness"
    background = True
    CHANNELS: ClassVar[dict[str, int]] = {"red": 0, "green": 1, "blue": 2}

    def __init__(self, channel: str | None = None):
        if channel is not None and channel not in self.CHANNELS:
            raise ConfigError(f"{{key}}={channel!r} is not one of {sorted(self.CHANNELS)} or null", "channel")
        self.channel = channel

    def score_uint8(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        pixels = images if self.channel is None else images[..., self.CHANNELS[self.channel]]
        return pixels.reshape(len(images), -1).mean(axis=1).astype(np.float32) / 255.0

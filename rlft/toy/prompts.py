"""Prompts of the toy world: every (shape, colour, background) caption, drawn uniformly."""

from __future__ import annotations

import itertools
import random

from rlft.prompts import PromptSource
from rlft.toy.world import COLORS, SHAPES, caption


class ToyPrompts(PromptSource):
    """Each caption with its labels as metadata ({shape, color, background}), which the toy
    rewards check the image against."""

    def __init__(self):
        self.labels = [
            {"shape": shape, "color": color, "background": background}
            for shape, color, background in itertools.product(SHAPES, COLORS, COLORS)
            if color != background
        ]
        super().__init__([caption(**labels) for labels in self.labels])

    def sample(self, rng: random.Random) -> tuple[str, dict]:
        index = rng.randrange(len(self.labels))
        return self.prompts[index], dict(self.labels[index])


def toy_vocabulary() -> list[str]:
    """Every word of the toy captions (the pretrained text encoder's word-level vocabulary)."""
    return sorted({word for prompt in ToyPrompts().prompts for word in prompt.split()})

"""Exact rewards on the toy world: read the image back and compare it with what the prompt asked."""

from __future__ import annotations

import re

import numpy as np

from rlft.errors import ConfigError
from rlft.rewards.base import Reward
from rlft.toy.world import read_scene

_CAPTION = re.compile(r"^an? (\w+) (\w+) on an? (\w+) background$")
ASPECTS = ("color", "shape", "alignment")


def requested(prompt: str, metadata: dict) -> tuple[str, str, str]:
    """(shape, colour, background) the prompt asks for: from the toy prompts' metadata, else parsed
    from the caption itself (so any source of toy captions works)."""
    if {"shape", "color", "background"} <= metadata.keys():
        return metadata["shape"], metadata["color"], metadata["background"]
    match = _CAPTION.match(prompt.strip())
    if match is None:
        raise ConfigError(
            f"the toy rewards score captions like 'a red circle on a blue background', not {prompt!r}; use prompt=toy"
        )
    color, shape, background = match.groups()
    return shape, color, background


class ToyReward(Reward):
    """1 where the image shows what the prompt asked, else 0: `color` (the shape's colour),
    `shape`, or `alignment` (shape, colour and background all right)."""

    background = True  # numpy only: scored in the reward thread while sampling goes on

    def __init__(self, aspect: str = "alignment"):
        if aspect not in ASPECTS:
            raise ConfigError(f"{{key}}={aspect!r} is not one of {', '.join(ASPECTS)}", "aspect")
        self.aspect = aspect
        self.name = f"toy_{aspect}"

    def score_uint8(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        scores = []
        for image, prompt, meta in zip(images, prompts, metadata, strict=True):
            shape, color, background = requested(prompt, meta)
            seen_shape, seen_color, seen_background = read_scene(image)
            if self.aspect == "color":
                right = seen_color == color
            elif self.aspect == "shape":
                right = seen_shape == shape
            else:
                right = (seen_shape, seen_color, seen_background) == (shape, color, background)
            scores.append(float(right))
        return np.asarray(scores, dtype=np.float32)

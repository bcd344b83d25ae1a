"""JPEG (in)compressibility (docs/algorithms.md#jpeg-compressibility-and-incompressibility): the size of
the image's JPEG at quality 95."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rlft.errors import ConfigError
from rlft.rewards.base import Reward


def jpeg_size_kb(image: np.ndarray, quality: int = 95) -> float:
    """Size in decimal kB of the PIL JPEG encoding of one (H, W, 3) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JpegCompressibility(Reward):
    """Reward = -kB: smaller files score higher."""

    name = "jpeg_compressibility"
    background = True  # PIL releases the GIL and runs no torch
    sign = -1.0

    def __init__(self, quality: int = 95):
        if not 0 <= quality <= 100:
            raise ConfigError(
                f"{{key}}={quality} must be a JPEG quality in [0, 100] (the reference uses 95)", "quality"
            )
        self.quality = quality

    def score_uint8(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        return np.array([self.sign * jpeg_size_kb(image, self.quality) for image in images], dtype=np.float32)


class JpegIncompressibility(JpegCompressibility):
    """Reward = +kB: larger files score higher."""

    name = "jpeg_incompressibility"
    sign = 1.0

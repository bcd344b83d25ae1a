"""Sample images: a captioned grid on disk each epoch, and the same images sent to image loggers."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from rlft.rewards.base import to_uint8


def save_image_grid(images: torch.Tensor, captions: list[str], path: Path) -> None:
    """Save images (B, 3, H, W) in [0, 1] as one PNG grid, with the captions beside it in a .txt."""
    pixels = to_uint8(images)
    count, height, width, _ = pixels.shape
    columns = min(count, 8)
    rows = math.ceil(count / columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(pixels):
        grid.paste(Image.fromarray(image), ((index % columns) * width, (index // columns) * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


def log_images(loggers, images: torch.Tensor, captions: list[str], step: int) -> None:
    """Send images to the loggers that show images (wandb, TensorBoard); CSV ignores them."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(
                key="samples", images=[Image.fromarray(p) for p in to_uint8(images)], caption=captions, step=step
            )
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_images("samples", images.float().clamp(0, 1), global_step=step)

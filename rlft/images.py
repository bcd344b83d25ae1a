"""Sample images: a captioned grid on disk each epoch (with its captions in a .txt and, for the
epoch's samples, an index of prompts and rewards in a .json), and the same images sent to image
loggers with the same captions."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from rlft.rewards.base import to_uint8

# Tiles narrower than this are enlarged (nearest neighbour, by a whole factor) so that a caption's
# text fits under them: the tiny model's 32-pixel images would carry five characters a line.
MIN_TILE_WIDTH = 160
FONT_SIZE = 11
CAPTION_LINES = 4  # the most lines a caption takes under its tile; longer ones end in "..."
GAP = 6  # white pixels between tiles, so that neighbouring captions do not run together


def caption(prompt: str, reward: float, eval_rewards: dict[str, float] | None = None) -> str:
    """`"a red circle" | reward 0.731`, then `| <name> <value>` for each eval reward that scored the
    image (NaN: not scored, left out)."""
    parts = [f'"{prompt}"', f"reward {reward:.3f}"]
    parts += [f"{name} {value:.3f}" for name, value in (eval_rewards or {}).items() if not math.isnan(value)]
    return " | ".join(parts)


def image_records(prompts: list[str], rewards: list[float], eval_rewards: dict[str, list[float]]) -> list[dict]:
    """One record per image, in the grid's order: index, prompt, reward and each eval reward that
    scored it (NaN, not scored, is left out: the .json stays strict JSON)."""
    return [
        {
            "index": index,
            "prompt": prompt,
            "reward": float(rewards[index]),
            "eval_rewards": {
                name: float(values[index]) for name, values in eval_rewards.items() if not math.isnan(values[index])
            },
        }
        for index, prompt in enumerate(prompts)
    ]


def record_caption(record: dict) -> str:
    return caption(record["prompt"], record["reward"], record["eval_rewards"])


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # a Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """The caption in lines that fit `width` pixels (words kept whole unless one alone is too wide),
    at most CAPTION_LINES of them."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width or not line and len(word) <= 1:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width and len(word) > 1:  # a word wider than the tile: split it
            cut = max(i for i in range(1, len(word) + 1) if i == 1 or font.getlength(word[:i]) <= width)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    lines.append(line)
    if len(lines) > CAPTION_LINES:
        lines = [*lines[: CAPTION_LINES - 1], lines[CAPTION_LINES - 1][:-3] + "..."]
    return lines


def save_image_grid(images: torch.Tensor, captions: list[str], path: Path) -> None:
    """Save images (B, 3, H, W) in [0, 1] as one PNG grid, each image with its caption written under
    it, and the captions beside the grid in a .txt (one line per image)."""
    pixels = to_uint8(images)
    count, height, width, _ = pixels.shape
    scale = max(1, math.ceil(MIN_TILE_WIDTH / width))
    tile_width, tile_height = width * scale, height * scale
    font = _font()
    wrapped = [_wrap(text, font, tile_width) for text in captions]
    line_height = font.getbbox("Ag|")[3] + 2
    strip = (max((len(lines) for lines in wrapped), default=0) * line_height + 4) if captions else 0
    columns = min(count, 8)
    rows = math.ceil(count / columns)
    cell_width, cell_height = tile_width + GAP, tile_height + strip + GAP
    grid = Image.new("RGB", (columns * cell_width - GAP, rows * cell_height - GAP), "white")
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(pixels):
        left, top = (index % columns) * cell_width, (index // columns) * cell_height
        tile = Image.fromarray(image)
        grid.paste(tile if scale == 1 else tile.resize((tile_width, tile_height), Image.NEAREST), (left, top))
        for line_index, line in enumerate(wrapped[index] if index < len(wrapped) else []):
            draw.text((left, top + tile_height + 2 + line_index * line_height), line, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    path.with_suffix(".txt").write_text("\n".join(captions) + "\n")


def write_json_atomically(data, path: Path) -> None:
    """Write `data` as JSON through a temporary file renamed over `path`: a reader (report.html, a
    script watching the run) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def save_epoch_images(images: torch.Tensor, records: list[dict], epoch: int, directory: Path) -> list[str]:
    """images/epoch_XXXX.png (captioned grid), .txt (captions) and .json ({"epoch", "images": records});
    returns the captions."""
    captions = [record_caption(record) for record in records]
    path = directory / f"epoch_{epoch:04d}.png"
    save_image_grid(images, captions, path)
    write_json_atomically({"epoch": epoch, "images": records}, path.with_suffix(".json"))
    return captions


def log_images(loggers, images: torch.Tensor, captions: list[str], step: int) -> None:
    """Send images to the loggers that show images (wandb, TensorBoard); CSV ignores them.
    TensorBoard's images carry no caption: the captions go beside them as a text summary."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(
                key="samples", images=[Image.fromarray(p) for p in to_uint8(images)], caption=captions, step=step
            )
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_images("samples", images.float().clamp(0, 1), global_step=step)
            text = "  \n".join(f"{index}: {text}" for index, text in enumerate(captions))  # markdown line breaks
            logger.experiment.add_text("samples/captions", text, global_step=step)

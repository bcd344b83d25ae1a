"""The README's before/after picture from a finished run's showcase grids.

    python experiments/readme_figure.py outputs/runs/<run> docs/default_run.png [--tiles 8]

Takes the first row of images/before.png and images/after.png (the same prompts and noise, each
tile captioned with its prompt and rewards by rlft/images.py) and stacks them under a label each.
The default run's figure comes from `python -m rlft` (seed 42) on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from rlft.images import GAP, _font


def first_row(grid_path: Path, columns: int) -> Image.Image:
    """The grid's first row (rlft/images.py lays grids out 8 to a row, GAP pixels apart)."""
    count = len(json.loads(grid_path.with_suffix(".json").read_text())["images"])
    per_row = min(count, 8)
    rows = math.ceil(count / per_row)
    grid = Image.open(grid_path).convert("RGB")
    cell_width = (grid.width + GAP) // per_row
    cell_height = (grid.height + GAP) // rows
    return grid.crop((0, 0, cell_width * min(columns, per_row) - GAP, cell_height - GAP))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python experiments/readme_figure.py", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tiles", type=int, default=8, help="images per row (at most 8)")
    args = parser.parse_args(argv)
    shown = json.loads((args.run / "showcase.json").read_text())
    samples = OmegaConf.load(args.run / "config.yaml").showcase.samples
    rows = []
    for when in ("before", "after"):
        row = first_row(args.run / "images" / f"{when}.png", args.tiles)
        mean = shown[when]["reward_mean"]
        label = f"{when} training: reward (everything right) {100 * mean:.1f}% over the {samples} showcase samples"
        rows.append((label, row))
    font = _font()
    label_height = 18
    width = max(row.width for _, row in rows)
    figure = Image.new("RGB", (width, sum(label_height + row.height + GAP for _, row in rows)), "white")
    draw = ImageDraw.Draw(figure)
    top = 0
    for label, row in rows:
        draw.text((0, top + 3), label, fill="black", font=font)
        figure.paste(row, (0, top + label_height))
        top += label_height + row.height + GAP
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out, optimize=True)
    print(f"saved {args.out} ({figure.width}x{figure.height})")


if __name__ == "__main__":
    main()

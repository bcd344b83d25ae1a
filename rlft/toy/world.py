"""The procedural world: one shape in a named colour on a plain background of another colour.

`ToyWorld(seed).scenes(n)` draws scenes (shape, colour, background, position, size) and
`draw(scene)` renders them; `read_scene(image)` reads shape, colour and background back from pixels
alone (background = the border's colour, shape colour = the commonest other colour, shape = how
much of its bounding box the shape fills), which is what the toy rewards score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named colours far apart in RGB, so a decoded image's pixels have an unambiguous nearest name.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 50, 190),
    "white": (245, 245, 245),
}
# Fill ratio of the bounding box: square 1, disc pi/4 = 0.785, triangle 1/2.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
_FILL_THRESHOLDS = (0.64, 0.9)  # below: triangle; between: circle; above: square


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    center: tuple[float, float] = (0.5, 0.5)  # (x, y) as fractions of the image side
    size: float = 0.5  # bounding-box side as a fraction of the image side

    @property
    def caption(self) -> str:
        return caption(self.shape, self.color, self.background)


def caption(shape: str, color: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


class ToyWorld:
    """Seeded scenes: uniform shape, colour, and a background of another colour; random size in
    [min_size, max_size] of the image side, placed wholly inside the image."""

    def __init__(self, seed: int = 0, min_size: float = 0.35, max_size: float = 0.7):
        self.rng = np.random.default_rng(seed)
        self.min_size, self.max_size = min_size, max_size

    def scene(self) -> Scene:
        names = list(COLORS)
        color = names[self.rng.integers(len(names))]
        background = [n for n in names if n != color][self.rng.integers(len(names) - 1)]
        center, size = self._placement()
        return Scene(SHAPES[self.rng.integers(len(SHAPES))], color, background, center, size)

    def placed(self, shape: str, color: str, background: str) -> Scene:
        """A scene of the given labels at a random position and size."""
        center, size = self._placement()
        return Scene(shape, color, background, center, size)

    def _placement(self) -> tuple[tuple[float, float], float]:
        size = float(self.rng.uniform(self.min_size, self.max_size))
        half = size / 2
        return (float(self.rng.uniform(half, 1 - half)), float(self.rng.uniform(half, 1 - half))), size

    def scenes(self, count: int) -> list[Scene]:
        return [self.scene() for _ in range(count)]


def shape_mask(scene: Scene, resolution: int) -> np.ndarray:
    """Boolean (H, W) mask of the shape, sampled at pixel centres."""
    coords = (np.arange(resolution) + 0.5) / resolution
    x, y = np.meshgrid(coords, coords)
    cx, cy = scene.center
    half = scene.size / 2
    dx, dy = x - cx, y - cy
    if scene.shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if scene.shape == "circle":
        return dx**2 + dy**2 <= half**2
    if scene.shape == "triangle":  # apex up, base at the bottom of the bounding box
        depth = (dy + half) / (2 * half)  # 0 at the apex, 1 at the base
        return (np.abs(dy) <= half) & (np.abs(dx) <= depth * half)
    raise ValueError(f"unknown shape {scene.shape!r}; known: {', '.join(SHAPES)}")


def draw(scene: Scene, resolution: int = 32) -> np.ndarray:
    """The scene as a uint8 RGB image (H, W, 3)."""
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = COLORS[scene.background]
    image[shape_mask(scene, resolution)] = COLORS[scene.color]
    return image


_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)


def nearest_colors(pixels: np.ndarray) -> np.ndarray:
    """Index into COLORS of each pixel's nearest named colour; pixels (..., 3) in 0-255."""
    distances = ((pixels[..., None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)
    return distances.argmin(-1)


def read_scene(image: np.ndarray) -> tuple[str, str, str]:
    """(shape, colour, background) read from a uint8 (H, W, 3) image's pixels alone."""
    labels = nearest_colors(image)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = np.bincount(border, minlength=len(_NAMES)).argmax()
    foreground = labels != background
    if not foreground.any():
        return "none", "none", _NAMES[background]
    color = np.bincount(labels[foreground], minlength=len(_NAMES)).argmax()
    mask = _without_specks(labels == color)
    if not mask.any():
        return "none", _NAMES[color], _NAMES[background]
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = mask.sum() / box
    low, high = _FILL_THRESHOLDS
    shape = "triangle" if fill < low else "circle" if fill < high else "square"
    return shape, _NAMES[color], _NAMES[background]


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """Drop pixels none of whose 4 neighbours is in the mask: isolated pixels of a noisy
    image would otherwise stretch the bounding box and change the fill ratio."""
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1].astype(int) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return mask & (neighbours >= 1)

"""A compositional procedural world: one to four coloured shapes, captions for GenEval's six task kinds,
and an exact reader and checker of them.

`CompositionalWorld(seed).sample(kind)` draws a caption, its GenEval-style metadata and a scene that
satisfies it; `render(scene, resolution)` paints the scene with today's world's shapes and colours
(`rlft.toy.world`); `read_objects(image)` recovers every object's shape, colour and centre from pixels
alone; `satisfies(objects, metadata)` is GenEval's strict per-image rule on what was read.

The metadata is GenEval's own layout (plain JSON types): `tag` (the task kind), `prompt`, `include`
(a list of {"class", "count", optional "color", optional "position": [relation, index of an earlier
include entry]}) and `exclude` (a list of {"class", "count"}: the image fails if it holds at least
that many of the class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from rlft.toy.world import COLORS, SHAPES, Scene, shape_mask

# GenEval's tag names for its six task kinds.
KINDS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBERS: dict[int, str] = {2: "two", 3: "three", 4: "four"}

_NAMES = list(COLORS)
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
# An object's bounding-box side, as a fraction of the image side, shrinks as the scene fills up. The
# smallest (0.25: 8 px at 32 px) keeps a triangle's and a circle's pixel footprints apart (see read_objects).
_MAX_SIZE = {1: 0.5, 2: 0.4, 3: 0.34, 4: 0.3}
_MIN_SIZE = 0.25


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    center: tuple[float, float]  # (x, y) as fractions of the image side, y downwards
    size: float  # bounding-box side as a fraction of the image side


@dataclass(frozen=True)
class CompositionalScene:
    objects: tuple[SceneObject, ...]
    background: str  # a named colour no object uses


class ReadObject(NamedTuple):
    shape: str
    color: str
    center: tuple[float, float]  # (x, y) as fractions of the image side, y downwards


def truth(scene: CompositionalScene) -> list[ReadObject]:
    """What an exact reader should find in the scene: its objects' labels and centres."""
    return [ReadObject(o.shape, o.color, o.center) for o in scene.objects]


def _phrase(shape: str, color: str | None) -> str:
    return f"a {color} {shape}" if color else f"a {shape}"


class CompositionalWorld:
    """Seeded captions, metadata and scenes for GenEval's six task kinds.

    name_colors: whether single_object and two_object captions name colours ("a red circle", as the
    toy world's captions always do) or not ("a circle", GenEval's own form). With colours named,
    single_object asks what colors asks and two_object what color_attr asks, except that two_object's
    two colours may coincide while color_attr's differ.
    gap: the least gap between two objects' bounding boxes; position_margin: the least gap between the
    two boxes along the relation's axis in position scenes (both as fractions of the image side).
    """

    def __init__(self, seed: int = 0, name_colors: bool = True, gap: float = 0.07, position_margin: float = 0.1):
        self.rng = np.random.default_rng(seed)
        self.name_colors = name_colors
        self.gap, self.position_margin = gap, position_margin

    def _pick(self, options: Sequence[str], count: int = 1) -> list[str]:
        return [options[i] for i in self.rng.permutation(len(options))[:count]]

    def prompt(self, kind: str) -> tuple[str, dict[str, Any]]:
        """A caption of the kind and its metadata."""
        if kind == "single_object" or kind == "colors":
            (shape,) = self._pick(SHAPES)
            color = self._pick(_NAMES)[0] if kind == "colors" or self.name_colors else None
            caption, include = _phrase(shape, color), [_wanted(shape, 1, color)]
            exclude: list[dict[str, Any]] = []
        elif kind == "two_object" or kind == "color_attr":
            shapes = self._pick(SHAPES, 2)
            if kind == "color_attr":
                colors: list[str | None] = list(self._pick(_NAMES, 2))
            elif self.name_colors:
                colors = [self._pick(_NAMES)[0], self._pick(_NAMES)[0]]
            else:
                colors = [None, None]
            caption = " and ".join(_phrase(s, c) for s, c in zip(shapes, colors))
            include, exclude = [_wanted(s, 1, c) for s, c in zip(shapes, colors)], []
        elif kind == "counting":
            (shape,) = self._pick(SHAPES)
            count = int(self.rng.integers(2, 5))
            caption = f"{NUMBERS[count]} {shape}s"
            include, exclude = [_wanted(shape, count)], [{"class": shape, "count": count + 1}]
        elif kind == "position":
            first, second = self._pick(SHAPES, 2)
            (relation,) = self._pick(RELATIONS)
            caption = f"a {first} {relation} a {second}"
            # GenEval's order: the reference object first, the placed one refers to it by index.
            include = [_wanted(second, 1), {**_wanted(first, 1), "position": [relation, 0]}]
            exclude = []
        else:
            raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")
        return caption, {"tag": kind, "prompt": caption, "include": include, "exclude": exclude}

    def scene(self, metadata: dict[str, Any]) -> CompositionalScene:
        """A scene that satisfies the metadata exactly: the included objects and nothing else."""
        wanted = [(req["class"], req.get("color")) for req in metadata["include"] for _ in range(req["count"])]
        if len(wanted) not in _MAX_SIZE:
            raise ValueError(f"metadata asks for {len(wanted)} objects; a scene holds 1 to {max(_MAX_SIZE)}")
        for _ in range(1000):
            colors = [c or self._pick(_NAMES)[0] for _, c in wanted]
            size_cap = _MAX_SIZE[len(wanted)]
            sizes = [float(self.rng.uniform(_MIN_SIZE, size_cap)) for _ in wanted]
            centers = self._place(sizes, metadata)
            if centers is None:
                continue
            objects = tuple(SceneObject(s, c, xy, z) for (s, _), c, xy, z in zip(wanted, colors, centers, sizes))
            unused = [n for n in _NAMES if n not in colors]
            scene = CompositionalScene(objects, self._pick(unused)[0])
            if satisfies(truth(scene), metadata):
                return scene
        raise RuntimeError(f"could not place a scene for {metadata['prompt']!r} in 1000 tries")

    def _place(self, sizes: list[float], metadata: dict[str, Any]) -> list[tuple[float, float]] | None:
        relation = next((req["position"][0] for req in metadata["include"] if "position" in req), None)
        if relation is not None:
            return self._place_pair(relation, *sizes)
        centers: list[tuple[float, float]] = []
        for size in sizes:
            half = size / 2
            for _ in range(200):
                xy = (float(self.rng.uniform(half, 1 - half)), float(self.rng.uniform(half, 1 - half)))
                if all(_apart(xy, size, c, s, self.gap) for c, s in zip(centers, sizes)):
                    centers.append(xy)
                    break
            else:
                return None
        return centers

    def _place_pair(self, relation: str, size_ref: float, size: float) -> list[tuple[float, float]] | None:
        """Centres of a reference box and a box `relation` it: apart by position_margin along the axis, and
        off the axis by at most half their distance along it, so that the relation is unambiguous."""
        least = (size_ref + size) / 2 + self.position_margin
        sign = -1.0 if relation in ("left of", "above") else 1.0
        for _ in range(200):
            ref = (float(self.rng.uniform(size_ref / 2, 1 - size_ref / 2)),
                   float(self.rng.uniform(size_ref / 2, 1 - size_ref / 2)))
            along = float(self.rng.uniform(least, 1.0))
            across = float(self.rng.uniform(-along / 2, along / 2))
            step = (sign * along, across) if relation in ("left of", "right of") else (across, sign * along)
            xy = (ref[0] + step[0], ref[1] + step[1])
            if all(size / 2 <= v <= 1 - size / 2 for v in xy) and _apart(xy, size, ref, size_ref, self.gap):
                return [ref, xy]
        return None

    def sample(self, kind: str) -> tuple[str, dict[str, Any], CompositionalScene]:
        """(caption, metadata, scene) of the kind."""
        caption, metadata = self.prompt(kind)
        return caption, metadata, self.scene(metadata)

    def samples(self, kind: str, count: int) -> list[tuple[str, dict[str, Any], CompositionalScene]]:
        return [self.sample(kind) for _ in range(count)]


def _wanted(shape: str, count: int, color: str | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"class": shape, "count": count}
    if color:
        req["color"] = color
    return req


def _apart(a: tuple[float, float], size_a: float, b: tuple[float, float], size_b: float, gap: float) -> bool:
    """Whether two boxes are at least `gap` apart along some axis."""
    reach = (size_a + size_b) / 2 + gap
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def render(scene: CompositionalScene, resolution: int = 32) -> np.ndarray:
    """The scene as a uint8 RGB image (resolution, resolution, 3), drawn with today's world's shapes."""
    if resolution < 16:
        raise ValueError(f"resolution={resolution} is too small to read shapes; use at least 32 (tested: 32, 64)")
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = COLORS[scene.background]
    for obj in scene.objects:
        image[shape_mask(Scene(obj.shape, obj.color, scene.background, obj.center, obj.size), resolution)] = (
            COLORS[obj.color]
        )
    return image


def _snap(images: np.ndarray) -> np.ndarray:
    """Index into COLORS of each pixel's nearest named colour: world.nearest_colors' rule, with the squared
    distance expanded (|p|^2 is the same for every colour) so that a batch is one matrix product."""
    pixels = images.reshape(-1, 3).astype(np.float32)
    return ((_PALETTE**2).sum(1) - 2 * pixels @ _PALETTE.T).argmin(1).reshape(images.shape[:-1])


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean (N, H, W) mask, per image: each pixel's label is the smallest
    flat index of its component (N*H*W off the mask). Min-label propagation with pointer jumping, over
    the whole batch at once."""
    off = mask.size
    labels = np.where(mask, np.arange(off).reshape(mask.shape), off)
    while True:
        low = labels.copy()
        np.minimum(low[:, 1:], labels[:, :-1], out=low[:, 1:])
        np.minimum(low[:, :-1], labels[:, 1:], out=low[:, :-1])
        np.minimum(low[:, :, 1:], labels[:, :, :-1], out=low[:, :, 1:])
        np.minimum(low[:, :, :-1], labels[:, :, 1:], out=low[:, :, :-1])
        low[~mask] = off
        # A label names a pixel of the same component, whose label is no larger: jump to it twice.
        flat = np.append(low.ravel(), off)
        jumped = flat[flat[low]]
        if np.array_equal(jumped, labels):
            return labels
        labels = jumped


def read_objects(image: np.ndarray, min_fraction: float = 0.008) -> list[ReadObject]:
    """Every object in a uint8 (H, W, 3) image, from pixels alone, in scan order of its top-left pixel.

    Pixels snap to their nearest named colour; the background is the border's commonest colour; an object
    is a 4-connected component of other pixels, at least `min_fraction` of the image (smaller ones are
    specks: noise, not objects), coloured by its commonest colour, centred at its bounding box's centre
    (GenEval's box centre; for a triangle this is the drawn centre, where its centroid sits lower). Its
    shape: as in today's world, the fill of the bounding box tells a square (1) from the rest; at 8 px a
    pixelated circle fills 0.64-0.94 of its box, too close to a triangle's 0.50-0.63, so a triangle
    (apex up) is told by its top half holding about a quarter of its pixels (measured 0.25-0.31; a
    circle or a square: 0.43-0.57).
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image of shape {image.shape}: expected (H, W, 3) RGB")
    return read_batch(image[None], min_fraction)[0]


def read_batch(images: np.ndarray, min_fraction: float = 0.008) -> list[list[ReadObject]]:
    """read_objects of each uint8 (N, H, W, 3) image, computed for the whole batch at once."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images of shape {images.shape}: expected (N, H, W, 3) RGB")
    count, height, width = images.shape[:3]
    labels = _snap(images)
    border = np.concatenate([labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]], axis=1)
    background = np.array([np.bincount(b, minlength=len(_NAMES)).argmax() for b in border])
    components = _components(labels != background[:, None, None]).ravel()
    pixels = np.flatnonzero(components < components.size)
    roots, which, sizes = np.unique(components[pixels], return_inverse=True, return_counts=True)
    rows, cols = pixels // width % height, pixels % width
    # Per component: bounding box, colour votes and top-half share, all by scatter over its pixels.
    top, bottom, left, right = (np.full(len(roots), v) for v in (height, -1, width, -1))
    np.minimum.at(top, which, rows)
    np.maximum.at(bottom, which, rows)
    np.minimum.at(left, which, cols)
    np.maximum.at(right, which, cols)
    votes = np.bincount(which * len(_NAMES) + labels.ravel()[pixels], minlength=len(roots) * len(_NAMES))
    colors = votes.reshape(len(roots), len(_NAMES)).argmax(1)
    middle = (top + bottom) / 2
    upper = np.bincount(which, weights=(rows < middle[which]) + 0.5 * (rows == middle[which]), minlength=len(roots))
    fill = sizes / ((bottom - top + 1) * (right - left + 1))
    found: list[list[ReadObject]] = [[] for _ in range(count)]
    for k in np.flatnonzero(sizes >= min_fraction * height * width):
        shape = "triangle" if upper[k] / sizes[k] < 0.375 else "square" if fill[k] >= 0.96 else "circle"
        center = ((left[k] + right[k] + 1) / 2 / width, (top[k] + bottom[k] + 1) / 2 / height)
        found[roots[k] // (height * width)].append(ReadObject(shape, _NAMES[colors[k]], (float(center[0]),
                                                                                         float(center[1]))))
    return found


def relations(a: tuple[float, float], b: tuple[float, float], margin: float = 0.05) -> set[str]:
    """The relations ("left of", "right of", "above", "below") of centre a to centre b, GenEval's way:
    shrink the offset by a margin on each axis, then a relation holds when the shrunk offset, over the
    offset's length, exceeds 0.5 along it. GenEval's margin is 0.1 x the two boxes' summed sides on that
    axis; the reader reports centres only, so the margin here is fixed at 0.05 of the image side, which is
    GenEval's for two objects a quarter of the image wide."""
    offset = np.subtract(a, b, dtype=float)
    shrunk = np.maximum(np.abs(offset) - margin, 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def satisfies(objects: Sequence[tuple[str, str, tuple[float, float]]], metadata: dict[str, Any]) -> bool:
    """GenEval's strict rule: 1 only if the image holds everything the caption asks, per include entry.

    - Presence (single_object, two_object, and every kind): at least `count` objects of the class; objects
      of other classes do not matter, as in GenEval.
    - counting: exactly N, by GenEval's pair of rules: include N and exclude N + 1 of the class.
    - colors and color_attr: at least `count` objects of the class have the asked colour. GenEval
      classifies the colour of its `count` most confident detections of the class; the reader has no
      confidences, so any `count` of them may carry it. In color_attr each shape is checked against its own
      colour, so colours swapped between the shapes fail.
    - position: both present and the relation (`relations`, GenEval's rule on centres) holds from every
      object of the placed class to every object of the reference class (GenEval: from each of its
      `count` most confident detections to each matched reference detection).
    """
    tag = metadata.get("tag")
    if tag not in KINDS:
        raise ValueError(f"metadata tag {tag!r} is not a task kind; known: {', '.join(KINDS)}")
    matched: list[list[tuple[str, str, tuple[float, float]]]] = []
    for req in metadata["include"]:
        found = [o for o in objects if o[0] == req["class"]]
        if len(found) < req["count"]:
            return False
        if "color" in req and sum(o[1] == req["color"] for o in found) < req["count"]:
            return False
        if "position" in req:
            relation, target = req["position"]
            if any(relation not in relations(o[2], t[2]) for o in found for t in matched[target]):
                return False
        matched.append(found)
    return all(sum(o[0] == req["class"] for o in objects) < req["count"] for req in metadata.get("exclude", []))

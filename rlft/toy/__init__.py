"""A world rlft can check: captioned images of coloured shapes, and an exact reader of them."""

from rlft.toy.world import COLORS, SHAPES, Scene, ToyWorld, caption, draw, read_scene

__all__ = ["COLORS", "SHAPES", "Scene", "ToyWorld", "caption", "draw", "read_scene"]

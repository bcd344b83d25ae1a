"""Prompt distributions (ALGORITHMS.md §6): each source draws (prompt, metadata) uniformly.

Sources take an explicit `random.Random` so that every rank draws its own, reproducible stream
and the stream's state can be checkpointed.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import inflect

from rlft.errors import ConfigError

ASSETS = Path(__file__).parent / "assets"


@cache
def read_lines(path: str) -> tuple[str, ...]:
    """Non-empty stripped lines of a shipped asset (by name) or of any file on disk (by path)."""
    candidate = Path(path).expanduser()
    if not candidate.is_file():
        candidate = ASSETS / path
    if not candidate.is_file():
        shipped = ", ".join(sorted(p.name for p in ASSETS.glob("*.txt")))
        raise ConfigError(
            f"prompt file '{path}' not found; give an existing path or one of the shipped files: {shipped}"
        )
    # Empty lines are dropped: the reference loader kept them and could draw "" as a prompt.
    lines = tuple(line.strip() for line in candidate.read_text(encoding="utf-8").splitlines() if line.strip())
    if not lines:
        raise ConfigError(f"prompt file '{candidate}' has no prompts")
    return lines


class PromptSource:
    """A finite list of prompts drawn uniformly with replacement."""

    def __init__(self, prompts: list[str] | tuple[str, ...]):
        if not prompts:
            raise ConfigError("a prompt source needs at least one prompt")
        self.prompts = tuple(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, rng: random.Random) -> tuple[str, dict]:
        return rng.choice(self.prompts), {}


class FromFile(PromptSource):
    """Lines [low:high] of a text file (a shipped asset name or a path)."""

    def __init__(self, path: str, low: int | None = None, high: int | None = None):
        super().__init__(read_lines(path)[low:high])


class NounsActivities(PromptSource):
    """ "<a|an> <noun> <activity>" for every noun and activity, e.g. "an ant riding a bike"."""

    def __init__(self, nouns: str, activities: str):
        article = inflect.engine()
        super().__init__(
            [f"{article.a(noun)} {activity}" for noun in read_lines(nouns) for activity in read_lines(activities)]
        )


class Manual(PromptSource):
    """An explicit list of prompts from the config, e.g. prompt.prompts='[a dog]'."""

    def __init__(self, prompts: list[str]):
        super().__init__([str(p) for p in prompts])

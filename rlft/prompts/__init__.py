"""Prompt distributions (docs/algorithms.md#prompt-distributions): each source draws (prompt, metadata) uniformly.

Sources take an explicit `random.Random` so that every rank draws its own, reproducible stream
and the stream's state can be checkpointed.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

from rlft.errors import ConfigError

ASSETS = Path(__file__).parent / "assets"


@cache
def read_lines(path: str, argument: str = "path") -> tuple[str, ...]:
    """Non-empty stripped lines of a shipped asset (by name) or of any file on disk (by path).
    `argument`: the loader's argument `path` was given as, named in errors (rlft.errors.ConfigError)."""
    candidate = Path(path).expanduser()
    if not candidate.is_file():
        candidate = ASSETS / path
    if not candidate.is_file():
        shipped = ", ".join(sorted(p.name for p in ASSETS.glob("*.txt")))
        problem = "is a directory, not a file" if Path(path).expanduser().is_dir() else "not found"
        raise ConfigError(
            f"{{key}}={path}: prompt file {problem}; give an existing text file (one prompt a line) or one of the "
            f"shipped files: {shipped}",
            argument,
        )
    try:
        text = candidate.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{{key}}={path}: cannot read the prompt file ({error}); give a UTF-8 text file", argument)
    # Empty lines are dropped: the reference loader kept them and could draw "" as a prompt.
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise ConfigError(f"{{key}}={path}: the prompt file {candidate} has no prompts (no non-empty line)", argument)
    return lines


class PromptSource:
    """A finite list of prompts drawn uniformly with replacement."""

    def __init__(self, prompts: list[str] | tuple[str, ...]):
        if not prompts:
            raise ConfigError("{key}=[]: a prompt source needs at least one prompt", "prompts")
        self.prompts = tuple(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, rng: random.Random) -> tuple[str, dict]:
        return rng.choice(self.prompts), {}


class FromFile(PromptSource):
    """Lines [low:high] of a text file (a shipped asset name or a path)."""

    def __init__(self, path: str, low: int | None = None, high: int | None = None):
        lines = read_lines(path)
        if not lines[low:high]:
            raise ConfigError(
                f"{{key}}={low} and high={high} select none of the {len(lines)} prompts of {path} "
                "(lines [low:high], counted from 0; null for the start or the end)",
                "low",
            )
        super().__init__(lines[low:high])


class NounsActivities(PromptSource):
    """ "<a|an> <noun> <activity>" for every noun and activity, e.g. "an ant riding a bike"."""

    def __init__(self, nouns: str, activities: str):
        import inflect  # here, not at the top: its import takes about 3 s (typeguard at import time)

        article = inflect.engine()
        super().__init__(
            [
                f"{article.a(noun)} {activity}"
                for noun in read_lines(nouns, "nouns")
                for activity in read_lines(activities, "activities")
            ]
        )


class Manual(PromptSource):
    """An explicit list of prompts from the config, e.g. prompt.prompts='[a dog]'."""

    def __init__(self, prompts: list[str]):
        super().__init__([str(p) for p in prompts])

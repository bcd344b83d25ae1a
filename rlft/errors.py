"""Errors that end a run with one clear message instead of a traceback."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


class RlftError(Exception):
    """A failure whose message names the problem and the fix; `python -m rlft` prints it alone."""


class ConfigError(RlftError, ValueError):
    """Bad input from the user (config value, path, missing weights). The message names the fix.

    A loader that cannot know under which config key it was called (the same image encoder is
    `reward.embedder` of the aesthetic reward and `model.image_embedder` of TDPO's critic) names its
    own argument instead: `argument="path"`, with `{key}` in the message wherever the key belongs.
    Raised bare, `{key}` reads as the argument; `rlft.config.build` re-raises it `at` the key the
    argument has in the run's config, so that the message names it (reward.embedder.path)."""

    def __init__(self, message: str, argument: str | None = None):
        self.template = message
        self.argument = argument
        super().__init__(message if argument is None else message.replace("{key}", argument))

    def at(self, key: str) -> ConfigError:
        """This error with its argument named by `key`, its full config key."""
        if self.argument is None:
            return self
        return ConfigError(self.template.replace("{key}", key))


class RewardServerError(RlftError):
    """A remote reward could not be computed (server down, unreachable, or failing)."""


def full_error_wanted() -> bool:
    """HYDRA_FULL_ERROR=1: the user asked for tracebacks instead of one-line messages (as Hydra reads it)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_with(error: Exception) -> NoReturn:
    """End the program on `error` (an RlftError, or a library's own message that names the setting,
    such as Lightning's MisconfigurationException): one line `rlft: error: ...` and exit code 2, or
    with HYDRA_FULL_ERROR=1 the exception itself, traceback and all."""
    if full_error_wanted():
        raise error
    print(f"rlft: error: {error}", file=sys.stderr)
    sys.exit(2)

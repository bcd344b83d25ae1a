"""Errors that end a run with one clear message instead of a traceback."""


class RlftError(Exception):
    """A failure whose message names the problem and the fix; `python -m rlft` prints it alone."""


class ConfigError(RlftError, ValueError):
    """Bad input from the user (config value, path, missing weights). The message names the fix."""


class RewardServerError(RlftError):
    """A remote reward could not be computed (server down, unreachable, or failing)."""

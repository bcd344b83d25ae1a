"""Errors that end a run with one clear message instead of a traceback."""


class ConfigError(ValueError):
    """Bad input from the user (config value, path, missing weights). The message names the fix."""

"""Placeholders for learned rewards that this version of rlft cannot run yet.

Their configs exist so that the paper presets compose; building one stops the run before any
work with a message that names the reward and the alternatives.
"""

from __future__ import annotations

from rlft.errors import ConfigError


def unavailable(name: str, what: str) -> None:
    raise ConfigError(
        f"reward={name} ({what}) is not available in this version of rlft: the learned rewards are not "
        "implemented yet. Use reward=jpeg_compressibility, jpeg_incompressibility or brightness, or run a preset "
        f"with a substitute, e.g. `python -m rlft experiment=... reward=jpeg_compressibility eval_rewards=[]`."
    )

"""rlft: reinforcement-learning fine-tuning of text-to-image diffusion models.

As a library (docs/library.md)::

    from rlft import compose
    from rlft.train import train

    cfg = compose(["model=tiny", "reward=brightness", "epochs=5"])
    metrics = train(cfg, "runs/mine")  # the last epoch's metrics; the run's files in runs/mine
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlft.quiet import install_log_filters

__version__ = "0.1.0"
__all__ = ["compose"]

if TYPE_CHECKING:
    from rlft.config import compose

# Lines that every run would print and that say nothing about it (Lightning's tips, transformers'
# torchvision fallback, ...), dropped by logger and message: rlft/quiet.py lists them.
install_log_filters()


def __getattr__(name: str):
    # On first use, so that `import rlft.<module>` (the reward server, a user's reward class) does
    # not pay for Hydra's import.
    if name == "compose":
        from rlft.config import compose

        return compose
    raise AttributeError(f"module 'rlft' has no attribute {name!r}")

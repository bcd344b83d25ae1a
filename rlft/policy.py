"""The policy a run trains: the model family's policy class, chosen by the model config
(`model.policy._target_`). The seam every family implements is rlft/families/base.py; Stable
Diffusion 1.x's policy (rlft/families/sd1.py) is also importable here as `Policy`.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig, OmegaConf
from torch import nn

from rlft.errors import ConfigError
from rlft.families.base import DTYPES, DiffusionPolicy, network_weights
from rlft.families.sd1 import SD1Policy

Policy = SD1Policy  # the name SD 1.x's policy had before the families arrived (user configs use it)

__all__ = ["DTYPES", "DiffusionPolicy", "Policy", "SD1Policy", "network_weights", "policy_class"]


def policy_class(model: DictConfig) -> type[nn.Module]:
    """The policy class of a model config's family: `model.policy._target_` (a user's model config that
    names none gets Stable Diffusion 1.x's)."""
    target = OmegaConf.select(model, "policy._target_")
    if target is None:
        return Policy
    module_name, _, name = str(target).rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name) if module_name else None
    except (ImportError, AttributeError):
        found = None
    if not isinstance(found, type) or not issubclass(found, DiffusionPolicy):
        raise ConfigError(
            f"model.policy._target_={target}: no such policy class; name a subclass of "
            "rlft.families.base.DiffusionPolicy importable from here, e.g. rlft.families.sd1.SD1Policy for "
            "Stable Diffusion 1.x, rlft.families.sd3.SD3Policy for SD3"
        )
    return found

"""Where the Hydra configs live, and loading single options outside the defaults list."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlft.errors import ConfigError

# An installed wheel carries conf/ inside the package; a source checkout has it at the top level.
_PACKAGED = Path(__file__).parent / "conf"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).parent.parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """The config of one option of a group, e.g. load_option("reward", "brightness")."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {group} '{name}'; available: {', '.join(options(group))}")
    return OmegaConf.load(path)


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a ConfigError raised inside reaches the user unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise

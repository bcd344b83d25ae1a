"""Where the Hydra configs live, and loading single options outside the defaults list."""

from __future__ import annotations

import types
import typing
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from rlft.errors import ConfigError

# An installed wheel carries conf/ inside the package; a source checkout has it at the top level.
_PACKAGED = Path(__file__).parent / "conf"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).parent.parent / "conf"


def on_experiment(overrides: list[str], experiment: str) -> list[str]:
    """`overrides` on `experiment` unless they choose one themselves (`~experiment`, no preset, is a
    choice too). Appended, not prepended: on the command line no Hydra flag (such as -m) may follow
    an override."""
    if any(o.startswith(("experiment=", "+experiment=", "~experiment")) for o in overrides):
        return list(overrides)
    return [*overrides, f"experiment={experiment}"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """The config of one option of a group, e.g. load_option("reward", "brightness")."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {group} '{name}'; available: {', '.join(options(group))}")
    return OmegaConf.load(path)


_SCALARS = (bool, int, float, str)


def _accepts(hint, value) -> bool | None:
    """Whether `value` fits a scalar annotation; None when the annotation is not a plain scalar."""
    if hint in _SCALARS:
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, hint)
    arguments = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        scalars = [a for a in arguments if a is not type(None)]
        if len(scalars) == 1 and scalars[0] in _SCALARS:
            return value is None or bool(_accepts(scalars[0], value))
    return None


def check_argument_types(node: DictConfig, where: str) -> None:
    """Check a node's scalar values against the annotations of the callable its `_target_` names,
    so that `algorithm.clip_range=abc` is reported by name instead of failing deep in a loss."""
    from hydra.utils import get_method

    try:
        target = get_method(node._target_)
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except (ImportError, AttributeError, NameError, TypeError, ValueError):
        return  # a target that cannot be introspected is left to instantiate's own errors
    for key in node:
        if str(key).startswith("_"):
            continue
        value = node[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            check_argument_types(value, f"{where}.{key}")
        elif key in hints and not isinstance(value, (DictConfig, ListConfig)) and _accepts(hints[key], value) is False:
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(f"{where}.{key}={value!r} should be of type {expected}")


def build(node: DictConfig, where: str | None = None, **kwargs):
    """hydra.utils.instantiate, after `check_argument_types`; a ConfigError raised inside reaches
    the user unwrapped. `where` names the node in messages (e.g. "algorithm")."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if where is not None and "_target_" in node:
        check_argument_types(node, where)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise

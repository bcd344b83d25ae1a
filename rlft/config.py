"""Where the Hydra configs live, and loading single options outside the defaults list."""

from __future__ import annotations

import copy
import inspect
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

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


# The user's own config directories that compose() composed with in this process (its config_dirs,
# or a hydra.searchpath among its overrides): options loaded outside the defaults list (eval_rewards)
# are looked up there too, as Hydra looks up the defaults list's.
_COMPOSED_DIRS: list[Path] = []


def source_dirs(sources) -> list[Path]:
    """The directories of Hydra's config sources (hydra.runtime.config_sources: file and pkg ones)
    other than Hydra's own and rlft's conf/, the user's: `--config-dir <dir>`, `hydra.searchpath`."""
    import importlib.util

    dirs = []
    for source in sources:
        if source.provider in ("hydra", "main"):
            continue
        if source.schema == "file":
            dirs.append(Path(source.path).absolute())
        elif source.schema == "pkg":
            try:
                spec = importlib.util.find_spec(str(source.path).replace("/", "."))
            except (ImportError, ValueError):  # Hydra itself reports a package that is not there
                continue
            if spec is not None:
                dirs.extend(Path(p) for p in spec.submodule_search_locations or [])
    return dirs


def config_dirs() -> list[Path]:
    """Where options are looked up, in Hydra's order: rlft's conf/ first, then the running command's
    own directories (--config-dir, hydra.searchpath), then those compose() composed with."""
    from hydra.core.hydra_config import HydraConfig

    running = source_dirs(HydraConfig.get().runtime.config_sources) if HydraConfig.initialized() else []
    return list(dict.fromkeys([CONFIG_DIR, *running, *_COMPOSED_DIRS]))


def options(group: str) -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")})


def option_path(group: str, name: str) -> Path:
    """The file of one option of a group, from the first of config_dirs() that has it."""
    for directory in config_dirs():
        if (directory / group / f"{name}.yaml").is_file():
            return directory / group / f"{name}.yaml"
    raise ConfigError(f"unknown {group} '{name}'; available: {', '.join(options(group))}")


def load_option(group: str, name: str) -> DictConfig:
    """The config of one option of a group, e.g. load_option("reward", "brightness")."""
    option = OmegaConf.load(option_path(group, name))
    option.pop("defaults", None)  # what the option brings to a composed run, not part of the option
    return option


def _one_line(message: str) -> str:
    """Hydra's message on one line: its lists of options joined, its search path left out."""
    text = message.split("\nConfig search path:")[0].replace(":\n\t", ": ").replace("\n\t", ", ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(
        line + ("" if i == len(lines) - 1 else " " if line.endswith(".") else "; ") for i, line in enumerate(lines)
    )


def compose(
    overrides: Sequence[str] = (), config_dirs: Sequence[str | Path] = (), config_name: str = "train"
) -> DictConfig:
    """rlft's config as `python -m rlft <overrides>` composes it (command-line syntax: "epochs=5",
    "reward=aesthetic", "'~experiment'" without the shell's quotes). `config_dirs` are the user's own
    config directories, laid out like conf/ (<dir>/reward/<name>.yaml, ...), whose options can then
    be chosen like rlft's own: what `hydra.searchpath=[file://<dir>]` adds on the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    overrides = list(overrides)
    if config_dirs:
        entries = []
        for directory in config_dirs:
            path = Path(directory).expanduser().absolute()
            if not path.is_dir():
                raise ConfigError(f"config_dirs: {directory} is not a directory (one laid out like rlft's conf/)")
            entries.append("'file://" + path.as_posix().replace("\\", "\\\\").replace("'", "\\'") + "'")
        if any(o.startswith("hydra.searchpath=") for o in overrides):
            raise ConfigError("give the config directories either as config_dirs or as a hydra.searchpath override")
        overrides.append(f"hydra.searchpath=[{','.join(entries)}]")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except HydraException as error:  # an unknown option or key: Hydra's message names it
        raise ConfigError(_one_line(str(error))) from error
    for path in source_dirs(cfg.hydra.runtime.config_sources):
        if path not in _COMPOSED_DIRS:
            _COMPOSED_DIRS.append(path)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


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


def node_key(node: DictConfig, key: str, where: str) -> str:
    """The config key a user sets for `node[key]`: `where.key`, or for a child that is an
    interpolation of another node (TDPO's `embedder: ${model.image_embedder}`) the key it points to."""
    child = node._get_node(key)
    if child is not None and child._is_interpolation():
        match = re.fullmatch(r"\$\{(\w[\w.]*)\}", str(child._value()))
        if match:
            return match.group(1)
    return f"{where}.{key}" if where else str(key)


def _parameters(target) -> tuple[dict, set[str] | None]:
    """The annotations of a `_target_` and its argument names (None when it takes **kwargs)."""
    function = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(function)
    parameters = inspect.signature(target).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return hints, None
    return hints, {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def check_argument_types(node: DictConfig, where: str) -> None:
    """Check a node's scalar values against the annotations of the callable its `_target_` names,
    so that `algorithm.clip_range=abc` is reported by name instead of failing deep in a loss, and
    its keys against the callable's arguments (`+algorithm.clip=0.1` is not DDPO's clip_range)."""
    from hydra.utils import get_method

    try:
        target = get_method(node._target_)
        hints, names = _parameters(target)
    except (ImportError, AttributeError, NameError, TypeError, ValueError):
        return  # a target that cannot be introspected is left to instantiate's own errors
    for key in node:
        if str(key).startswith("_"):
            continue
        if names is not None and key not in names:
            raise ConfigError(
                f"{node_key(node, key, where)}={node._get_node(key)._value()} is not an argument of {node._target_}; "
                f"it takes {', '.join(sorted(names)) or 'none'}"
            )
        value = node[key]
        if isinstance(value, DictConfig) and "_target_" in value:
            check_argument_types(value, node_key(node, key, where))
        elif key in hints and not isinstance(value, (DictConfig, ListConfig)) and _accepts(hints[key], value) is False:
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(f"{node_key(node, key, where)}={value!r} should be of type {expected}")


def _argument_key(node: DictConfig, error: ConfigError, where: str) -> str:
    """The config key of the argument a ConfigError raised while building `node` is about."""
    if error.argument in node:
        return node_key(node, error.argument, where)
    return f"{where}.{error.argument}" if where else error.argument


def _instantiate(node: DictConfig, built: dict, kwargs: dict):
    """instantiate(node, **kwargs) with the children in `built` already made: the rest of the node
    becomes a partial that is called with them (handing them to instantiate as kwargs would merge
    them into the config, and OmegaConf turns a dataclass into config values)."""
    from hydra.utils import instantiate

    if not built:
        return instantiate(node, **kwargs)
    rest = copy.deepcopy(node)
    rest._set_parent(node._get_parent())  # interpolations such as ${model.path} still resolve
    with open_dict(rest):
        for key in built:
            del rest[key]
    return instantiate(rest, _partial_=True, **kwargs)(**built)


def _unimportable(node: DictConfig, where: str | None) -> str:
    """Why `node._target_` cannot be imported, and where Python looks for it."""
    import importlib

    target = str(node._target_)
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None) is not None if module else False
        problem = "its module has no such name" if not found else "it cannot be loaded"
    except Exception as error:  # noqa: BLE001 - the module's own error is the reason shown
        problem = f"{type(error).__name__}: {error}"
    key = f"{where}._target_" if where else "_target_"
    return (
        f"{key}={target} cannot be imported ({problem}); a class of your own must be importable: run "
        "python -m rlft from the directory that holds its package, or add that directory to PYTHONPATH"
    )


def build(node: DictConfig, where: str | None = None, **kwargs):
    """hydra.utils.instantiate, after `check_argument_types`; a ConfigError raised inside reaches
    the user unwrapped. `where` names the node in messages (e.g. "algorithm"; "" for a node that
    is no key of the run's config): its nested `_target_` nodes are then built first, one by one,
    so that a ConfigError about a loader's argument names that argument's full key."""
    from hydra.errors import InstantiationException

    built = {}
    if where is not None and "_target_" in node:
        check_argument_types(node, where)
        if node.get("_recursive_", True):
            for key in node:
                child = node[key]
                nested = isinstance(child, DictConfig) and "_target_" in child and not child.get("_partial_", False)
                if nested and key not in kwargs:
                    built[key] = build(child, node_key(node, key, where))
    try:
        return _instantiate(node, built, kwargs)
    except (ConfigError, InstantiationException) as error:
        cause = error
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is None:
            if str(error).startswith("Error locating target"):  # a user's class that cannot be imported
                raise ConfigError(_unimportable(node, where)) from error
            raise
        located = cause if where is None or cause.argument is None else cause.at(_argument_key(node, cause, where))
        # chained to what it came from (HYDRA_FULL_ERROR=1 shows it), not to Hydra's wrapper around it
        raise located from (cause if located is not cause else cause.__cause__)

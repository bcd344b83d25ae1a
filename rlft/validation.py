"""The checks `rlft.train.validate` runs on a composed config before anything is built or loaded.

Each bad value ends the run at once with one ConfigError that starts with `key=value` and says
what would be right, instead of a traceback minutes (or epochs) later. Checks of a component's
own arguments that need the component live in its constructor (rewards, prompts, KL); what can be
told from the config alone is here: ranges of single keys, keys that must agree, the hardware
group's names, files and directories the run will read or write, and the shape of lists.
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlft.config import options
from rlft.errors import ConfigError, exit_with
from rlft.sampler import group_problem

# The dtypes rlft converts weights and stored latents to (rlft.policy.DTYPES, rlft.rewards.learned.DTYPES).
DTYPE_NAMES = ("float32", "bfloat16", "float16")
MAX_SEED = 2**32 - 1  # numpy's (and so Lightning's seed_everything's) largest seed


class Rule(typing.NamedTuple):
    holds: Callable[[float], bool]
    requirement: str  # what the value must be, completing "<key>=<value> must be ..."


def at_least(low: int) -> Rule:
    return Rule(lambda v: v >= low, f"at least {low}")


def positive() -> Rule:
    return Rule(lambda v: v > 0, "> 0")


def non_negative() -> Rule:
    return Rule(lambda v: v >= 0, ">= 0")


def fraction(low_open: bool, high_open: bool) -> Rule:
    def holds(v: float) -> bool:
        return (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)

    return Rule(holds, f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}")


ADAM_BETA = fraction(low_open=False, high_open=True)

# Ranges of single keys; a key this config does not have (another algorithm's) is skipped, and a
# value of the wrong type is left to the type checks (train.TYPED_KEYS, check_argument_types).
RANGES: dict[str, tuple[Rule, str]] = {
    "epochs": (at_least(1), ""),
    "seed": (Rule(lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]"), "numpy's seed range"),
    "save_freq": (at_least(1), "a checkpoint every save_freq epochs; last.ckpt is kept besides"),
    "num_checkpoints": (at_least(-1), "-1 keeps every numbered checkpoint, 0 only last.ckpt"),
    "showcase.samples": (non_negative(), "0 switches the showcase off"),
    "showcase.grid": (non_negative(), "the number of showcase images saved in the grids"),
    "showcase.batch_size": (at_least(1), ""),
    "showcase.seed": (Rule(lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]"), ""),
    "geneval.per_kind": (non_negative(), "evaluation prompts per task kind; 0 switches toy_geneval off"),
    "geneval.seeds_per_prompt": (at_least(1), "images per evaluation prompt"),
    "geneval.every": (non_negative(), "epochs between evaluations during the run; 0: before and after only"),
    "geneval.batch_size": (at_least(1), ""),
    "geneval.seed": (Rule(lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]"), ""),
    "geneval.grid": (non_negative(), "the number of evaluation images saved in the grids"),
    "sample.batch_size": (at_least(1), "samples per batch per process"),
    "sample.num_batches_per_epoch": (at_least(1), ""),
    "sample.images_per_prompt": (at_least(1), ""),
    "sample.num_steps": (at_least(1), "denoising steps per sample"),
    "sample.kernel.eta": (non_negative(), "0 is a deterministic step, which only algorithm=rwr trains on"),
    "sample.kernel.noise_level": (non_negative(), "0 is a deterministic step, which only algorithm=rwr trains on"),
    "sample.guidance_scale": (non_negative(), "1 samples without classifier-free guidance"),
    "sample.num_images_logged": (non_negative(), "0 logs no images"),
    "train.batch_size": (at_least(1), "samples per minibatch per process"),
    "train.gradient_accumulation_steps": (at_least(1), ""),
    "train.num_inner_epochs": (at_least(1), ""),
    "train.timestep_fraction": (fraction(low_open=True, high_open=False), "the fraction of steps trained on"),
    "train.learning_rate": (positive(), ""),
    "train.adam_beta1": (ADAM_BETA, ""),
    "train.adam_beta2": (ADAM_BETA, ""),
    "train.adam_weight_decay": (non_negative(), ""),
    "train.adam_epsilon": (positive(), ""),
    "train.max_grad_norm": (positive(), "gradients are clipped to this global norm"),
    "hardware.num_nodes": (at_least(1), ""),
    "model.lora.r": (at_least(1), "the adapters' rank; model.lora=null trains the full UNet"),
    "model.lora.lora_alpha": (positive(), ""),
    # the algorithms' own numbers (each algorithm has some of them)
    "algorithm.clip_range": (positive(), "the PPO clip range of the importance ratio"),
    "algorithm.adv_clip_max": (positive(), "advantages are clipped to +-adv_clip_max"),
    "algorithm.stat_buffer_size": (at_least(1), "rewards kept per prompt"),
    "algorithm.stat_min_count": (non_negative(), ""),
    "algorithm.temperature": (non_negative(), "RWR's inverse temperature beta"),
    "algorithm.percentile": (Rule(lambda v: 0 <= v <= 100, "in [0, 100]"), ""),
    "algorithm.gamma": (fraction(low_open=True, high_open=False), "the discount of TDPO's returns"),
    "algorithm.clip_range_reward": (non_negative(), "0 leaves the rewards unclipped"),
    "algorithm.clip_range_critic": (positive(), ""),
    "algorithm.cf_coef": (non_negative(), ""),
    "algorithm.critic_learning_rate": (positive(), ""),
    "algorithm.critic_adam_beta1": (ADAM_BETA, ""),
    "algorithm.critic_adam_beta2": (ADAM_BETA, ""),
    "algorithm.critic_adam_weight_decay": (non_negative(), ""),
    "algorithm.critic_adam_epsilon": (positive(), ""),
    "algorithm.neuron_reset_freq": (at_least(1), "epochs between neuron resets"),
    "algorithm.kl_beta": (non_negative(), "GRPO's KL weight; 0 switches the KL term off"),
    "algorithm.kl.coef": (non_negative(), "0 switches KL regularization off"),
    "algorithm.kl.init_kl_coef": (non_negative(), ""),
    "algorithm.kl.horizon": (positive(), ""),
    # a remote reward's client settings
    "reward.batch_size": (at_least(1), "images per scoring call"),
    "reward.timeout": (positive(), "seconds per request"),
    "reward.retries": (non_negative(), ""),
    "reward.backoff": (non_negative(), "seconds before the first retry"),
}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def check_ranges(cfg: DictConfig) -> None:
    for key, (rule, note) in RANGES.items():
        value = _select(cfg, key)
        if not _number(value):
            continue
        if math.isnan(value) or not rule.holds(value):
            raise ConfigError(f"{key}={value} must be {rule.requirement}" + (f" ({note})" if note else ""))
    dropout = _select(cfg, "algorithm.critic_dropout")
    if isinstance(dropout, ListConfig) and not all(_number(p) and 0 <= p < 1 for p in dropout):
        raise ConfigError(f"algorithm.critic_dropout={list(dropout)} must hold probabilities in [0, 1)")


def check_missing(cfg: DictConfig) -> None:
    """Mandatory values (`???` in conf/, such as prompt=from_file's path) must be given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        hint = " (the prompt file to read, e.g. prompt.path=/path/to/prompts.txt)" if key == "prompt.path" else ""
        raise ConfigError(f"{key}=??? must be set on the command line{hint}")


def check_consistency(cfg: DictConfig) -> None:
    """Keys that must agree with each other (their own ranges are already checked)."""
    s, t = cfg.sample, cfg.train
    per_epoch = s.batch_size * s.num_batches_per_epoch
    if per_epoch % t.batch_size:
        raise ConfigError(
            f"train.batch_size={t.batch_size} must divide the samples per epoch per process "
            f"(sample.batch_size * sample.num_batches_per_epoch = {per_epoch})"
        )
    if (per_epoch // t.batch_size) % t.gradient_accumulation_steps:
        raise ConfigError(
            f"train.gradient_accumulation_steps={t.gradient_accumulation_steps} must divide the number of training "
            f"minibatches per epoch ({per_epoch // t.batch_size})"
        )
    problem = group_problem(per_epoch, s.images_per_prompt)
    if problem:
        raise ConfigError(problem)
    if _select(cfg, "algorithm._target_") == "rlft.algorithms.GRPO" and s.images_per_prompt < 2:
        raise ConfigError(
            f"sample.images_per_prompt={s.images_per_prompt} must be at least 2 with algorithm=grpo, whose "
            "advantages compare the images of one prompt: set e.g. sample.images_per_prompt=4"
        )
    window = t.timestep_window
    if not (
        isinstance(window, ListConfig)
        and len(window) == 2
        and all(_number(w) for w in window)
        and 0 <= window[0] < window[1] <= 1
    ):
        shown = list(window) if isinstance(window, ListConfig) else window
        raise ConfigError(f"train.timestep_window={shown} must be [start, stop] with 0 <= start < stop <= 1")
    check_cps_window(cfg)
    if _select(cfg, "geneval") is not None:
        from rlft.toy.geneval import check_kernel_setting

        check_kernel_setting(_select(cfg, "geneval.kernel"))


def check_cps_window(cfg: DictConfig) -> None:
    """CPS's last step (into s = 0) has std 0: no density to train on. A policy-gradient run with the
    CPS kernel must leave it out of train.timestep_window."""
    from rlft.trajectories import trained_steps

    if _select(cfg, "sample.kernel._target_") != "rlft.kernels.CPSKernel":
        return
    if _select(cfg, "algorithm._target_") in ("rlft.algorithms.RewardWeightedRegression", "rlft.algorithms.FilterAndFinetune"):
        return
    t, steps = cfg.train, cfg.sample.num_steps
    trained, _ = trained_steps(steps, t.timestep_fraction, tuple(t.timestep_window))
    if trained.stop == steps:
        stop = (steps - 1) / steps
        raise ConfigError(
            f"train.timestep_window={list(t.timestep_window)} trains the CPS kernel's last step, which is "
            f"deterministic (its std is 0 at s = 0): end the window before it, e.g. "
            f"train.timestep_window=[{t.timestep_window[0]}, {stop:.3g}]"
        )


def _one_of(key: str, value, accepted, note: str = "", shown=None, hint: str = "") -> None:
    """`value` must be in `accepted`; the message lists `shown` (default: `accepted`), then the
    `note` in brackets and a `hint` sentence."""
    if value not in accepted:
        listed = ", ".join(map(str, shown or accepted))
        message = f"{key}={value} must be one of {listed}" + (f" ({note})" if note else "")
        raise ConfigError(message + (f". {hint}" if hint else ""))


HARDWARE_HINT = "Check the hardware group (hardware=cpu runs on any machine)."


def _lightning_names() -> tuple[list, list, list]:
    """Lightning's precision values (all it accepts, and its canonical names) and strategy names."""
    from lightning.fabric.connector import _PRECISION_INPUT, _PRECISION_INPUT_STR
    from lightning.pytorch.strategies import StrategyRegistry

    accepted = []
    for part in typing.get_args(_PRECISION_INPUT):
        accepted += list(typing.get_args(part)) or [part]
    return accepted, list(typing.get_args(_PRECISION_INPUT_STR)), ["auto", *StrategyRegistry.available_strategies()]


def _devices_ok(devices) -> bool:
    """Lightning's forms: a count (-1: all), "auto", a list of device indices, or such a string."""
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, ListConfig):
        return len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return True
        if text.isdigit():
            return int(text) >= 1
        indices = [part.strip() for part in text.split(",") if part.strip()]
        return bool(indices) and all(index.isdigit() for index in indices)
    return False


def check_hardware(hw: DictConfig) -> None:
    """Names and forms of the hardware group's values (whether this machine has the accelerator is
    checked when the trainer is built: rlft.train.build_accelerator)."""
    _one_of("hardware.accelerator", hw.accelerator, ("auto", "cpu", "gpu", "cuda", "mps", "tpu"), hint=HARDWARE_HINT)
    precisions, canonical, strategies = _lightning_names()
    _one_of("hardware.precision", hw.precision, precisions, shown=canonical, hint=HARDWARE_HINT)
    _one_of("hardware.frozen_dtype", hw.frozen_dtype, DTYPE_NAMES, "the dtype of the frozen weights")
    if not isinstance(hw.strategy, DictConfig):
        main = [name for name in strategies if "find_unused" not in name]  # (the variants make a long list)
        _one_of(
            "hardware.strategy",
            hw.strategy,
            strategies,
            "or their _find_unused_parameters_* variants",
            main,
            HARDWARE_HINT,
        )
    if not _devices_ok(hw.devices):
        raise ConfigError(
            f"hardware.devices={hw.devices} must be a number of devices (at least 1; -1 for all of them), auto, "
            f"or a list of device indices such as [0,1]. {HARDWARE_HINT}"
        )


def check_dtypes(cfg: DictConfig) -> None:
    _one_of("perf.trajectory_dtype", cfg.perf.trajectory_dtype, DTYPE_NAMES, "the dtype sampled latents are kept in")
    compile_unet = cfg.perf.compile
    if not isinstance(compile_unet, (bool, DictConfig)):
        raise ConfigError(
            f"perf.compile={compile_unet!r} must be true, false, or torch.compile's arguments ({{mode: max-autotune}})"
        )


def check_eval_rewards(cfg: DictConfig) -> None:
    names = cfg.eval_rewards
    available = options("reward")
    if not isinstance(names, ListConfig):
        raise ConfigError(
            f"eval_rewards={names} must be a list of reward options, e.g. eval_rewards=[{names}] "
            f"(available: {', '.join(available)})"
        )
    for name in names:
        if name not in available:
            raise ConfigError(
                f"eval_rewards=[{','.join(map(str, names))}]: {name} is not a reward option; "
                f"available: {', '.join(available)}"
            )


def unwritable(path: Path) -> str | None:
    """Why a directory cannot be made at `path` (None when nothing is seen against it): it or an
    ancestor is a file, or its nearest existing ancestor is not writable."""
    path = path.expanduser().absolute()
    if path.exists():
        return None if path.is_dir() else f"{path} is a file"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{parent} is not writable"
            return None
    return None


class RunDirectoryCheck(Callback):
    """A Hydra callback (hydra.callbacks in conf/train.yaml): Hydra makes the run's directory
    before rlft's code runs, and a directory that cannot be made ended in Hydra's traceback. This
    makes it first (as Hydra would: parents too, an existing one is fine), and ends the run with one
    line naming output_root or hydra.run.dir / hydra.sweep.dir when it cannot. (With
    HYDRA_FULL_ERROR=1 the error is raised instead; Hydra turns a callback's exception into a
    warning, which prints the message, and its own mkdir then fails with the full traceback.)"""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.make(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.make(config, "hydra.sweep.dir")

    @staticmethod
    def make(config: DictConfig, key: str) -> None:
        try:
            directory = Path(str(OmegaConf.select(config, key)))
        except OmegaConfBaseException:  # a directory Hydra cannot resolve is reported in Hydra's own words
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            root = str(config.get("output_root") or "")
            blamed = f"output_root={root}" if root and str(directory).startswith(root) else f"{key}={directory}"
            reason = unwritable(directory) or f"{type(error).__name__}: {error.strerror or error}"
            exit_with(
                ConfigError(
                    f"{blamed}: cannot create the run directory {directory} ({reason}); "
                    "give a directory this user can write to"
                )
            )


def check_paths(cfg: DictConfig) -> None:
    """Files the run reads (model.path) and directories it writes (debug.dump_dir; output_root's
    run directory is made, and checked, before this: RunDirectoryCheck)."""
    model_path = cfg.model.get("path")
    if model_path:
        directory = Path(str(model_path)).expanduser()
        components = cfg.model.get("components")
        target = str(components.get("_target_", "")) if isinstance(components, DictConfig) else ""
        hub_id = components.get("hub_id") if isinstance(components, DictConfig) else None
        if target.startswith("rlft.toy"):
            flow = target.startswith("rlft.toy.flow")  # model=toy_flow's pretraining is another config
            command = "python -m rlft.pretrain" + (" --config-name pretrain_flow" if flow else "")
            fix = f"give the pipeline/ directory of a `{command}` run, or model.path=null for the shipped one"
        else:
            download = f"`hf download {hub_id or '<hub id>'} --local-dir {model_path}`"
            fix = (
                "give a diffusers pipeline directory (model_index.json and unet/, vae/, text_encoder/, tokenizer/, "
                f"scheduler/): on a machine with internet access {download} writes one"
                + (f", or model.path=null loads {hub_id} from the hub" if hub_id else "")
            )
        if not directory.exists():
            problem = "there is no such directory"
        elif not directory.is_dir():
            problem = "it is a file, not a pipeline directory"
        elif not (directory / "model_index.json").is_file():
            problem = "it has no model_index.json"
        else:
            problem = None
        if problem:
            raise ConfigError(f"model.path={model_path}: {problem}; {fix}")
    dump_dir = cfg.debug.get("dump_dir")
    if dump_dir:
        problem = unwritable(Path(str(dump_dir)))
        if problem:
            raise ConfigError(f"debug.dump_dir={dump_dir}: cannot write there ({problem}); give a directory or null")


def check_urls(node: DictConfig, where: str) -> None:
    """Every `url` of a component (reward=remote's server) must be an http(s) address."""
    for key in node:
        value = node[key]
        if isinstance(value, DictConfig):
            check_urls(value, f"{where}.{key}")
        elif key == "url":
            parsed = urlparse(str(value))
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(
                    f"{where}.{key}={value} is not an http(s) URL; give the address `python -m rlft.serve` listens "
                    f"on, e.g. {where}.{key}=http://127.0.0.1:8085"
                )


def check_config(cfg: DictConfig) -> None:
    """Everything above, in the order a user would want to hear about it (types first: train._check_types)."""
    check_missing(cfg)
    check_ranges(cfg)
    check_consistency(cfg)
    check_hardware(cfg.hardware)
    check_dtypes(cfg)
    check_eval_rewards(cfg)
    check_urls(cfg.reward, "reward")
    check_paths(cfg)

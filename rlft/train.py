"""Build a run from the composed config and fit it: rlft.train(cfg)."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from rlft.algorithms import Algorithm
from rlft.config import CONFIG_DIR, build, load_option, option_path
from rlft.errors import ConfigError
from rlft.export import RunRecord, export_run
from rlft.families.base import DiffusionPolicy
from rlft.module import RLModule
from rlft.policy import policy_class
from rlft.preemption import StopOnSigterm, cluster_plugins
from rlft.quiet import no_library_progress_bars, quiet_known_warnings, quiet_resume_warnings
from rlft.report import ReportCallback, refresh_report
from rlft.resume import EpochCheckpoint, Resumption, find_resumption, resumption_at, trim_metrics
from rlft.validation import HARDWARE_HINT, check_config

log = logging.getLogger("rlft")


# Keys whose type a typo on the command line could break (e.g. epochs=ten), with their type.
TYPED_KEYS = {
    "epochs": int,
    "seed": int,
    "save_freq": int,
    "num_checkpoints": int,
    "sample.batch_size": int,
    "sample.num_batches_per_epoch": int,
    "sample.num_steps": int,
    "sample.kernel.eta": float,
    "sample.kernel.noise_level": float,
    "sample.guidance_scale": float,
    "sample.num_images_logged": int,
    "train.batch_size": int,
    "train.gradient_accumulation_steps": int,
    "train.num_inner_epochs": int,
    "train.timestep_fraction": float,
    "sample.images_per_prompt": int,
    "sample.same_noise_per_group": bool,
    "train.cfg": bool,
    "train.learning_rate": float,
    "train.adam_beta1": float,
    "train.adam_beta2": float,
    "train.adam_weight_decay": float,
    "train.adam_epsilon": float,
    "train.max_grad_norm": float,
    "showcase.samples": int,
    "showcase.grid": int,
    "showcase.batch_size": int,
    "showcase.seed": int,
    "geneval.per_kind": int,
    "geneval.seeds_per_prompt": int,
    "geneval.every": int,
    "geneval.batch_size": int,
    "geneval.seed": int,
    "geneval.grid": int,
    "hardware.num_nodes": int,
    "hardware.allow_tf32": bool,
    "perf.channels_last": bool,
    "perf.gradient_checkpointing": bool,
}


def _check_types(cfg: DictConfig) -> None:
    for key, kind in TYPED_KEYS.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key.startswith("sample.kernel."):  # a parameter of another kernel
            continue
        ok = (
            isinstance(value, bool)
            if kind is bool
            else (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (kind is float or isinstance(value, int))
            )
        )
        if not ok:
            expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
            raise ConfigError(f"{key}={value!r} should be {expected}")


def validate(cfg: DictConfig) -> None:
    """Reject bad and inconsistent settings before anything is built, naming the key and the fix
    (the checks beyond the types: rlft/validation.py)."""
    _check_types(cfg)
    check_config(cfg)


# The checkpoint rank 0 resumes, handed to the ranks Lightning starts as its child processes (they
# see another run directory, so they could not find a run that rank 0 found under output_root).
RESUME_ENV = "RLFT_RESUME_FROM"


def _run_dir_made_up() -> bool:
    """Whether the run directory is one Hydra made up for a single run (not hydra.run.dir=...)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.RUN and not any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)


def resumption_for(cfg: DictConfig, run_dir: Path) -> Resumption | None:
    """What this process continues: in a rank that Lightning started (LOCAL_RANK > 0, a child of
    rank 0), rank 0's choice; otherwise `find_resumption`'s."""
    parent, _, path = os.environ.get(RESUME_ENV, "").partition(":")
    if os.environ.get("LOCAL_RANK", "0") != "0" and parent == str(os.getppid()):
        return resumption_at(Path(path)) if path else None
    return find_resumption(cfg, run_dir, search_output_root=_run_dir_made_up())


# The policy arguments every family takes from the run's config (train.build_module passes them).
COMMON_POLICY_ARGUMENTS = frozenset(
    {"self", "components", "kernel", "lora", "frozen_dtype", "keep_reference", "compile_unet", "channels_last",
     "gradient_checkpointing"}
)  # fmt: skip


def family_options(model: DictConfig, family: type | None = None) -> dict:
    """The family's own policy arguments: model.policy's keys besides _target_; a key the family's
    class (`family`, by default the model's) does not take is one line listing the ones it does."""
    node = OmegaConf.select(model, "policy")
    options = {k: v for k, v in (OmegaConf.to_container(node, resolve=True) if node else {}).items() if k != "_target_"}
    family = policy_class(model) if family is None else family
    accepted = sorted(set(inspect.signature(family.__init__).parameters) - COMMON_POLICY_ARGUMENTS)
    for key, value in options.items():
        if key not in accepted:
            raise ConfigError(
                f"model.policy.{key}={value}: {family.__name__} has no option {key}; "
                f"its own options: {', '.join(accepted) or 'none'}"
            )
    return options


def build_module(cfg: DictConfig, run_dir: Path) -> RLModule:
    # Cheapest first: prompts (a text file), then rewards (the likeliest problem: missing weights),
    # so that a bad value is reported before minutes go into loading the model.
    prompts = build(cfg.prompt, "prompt")
    reward = build(cfg.reward, "reward")
    eval_rewards = {name: build_eval_reward(name) for name in cfg.eval_rewards}
    algorithm = build(cfg.algorithm, "algorithm")
    policy = build_policy(cfg, algorithm.needs_reference or algorithm.trains_against_reference, algorithm)
    return RLModule(cfg, policy, algorithm, prompts, reward, eval_rewards, run_dir)


def build_policy(cfg: DictConfig, keep_reference: bool = False, algorithm: Algorithm | None = None) -> DiffusionPolicy:
    """The run's policy before training: cfg.model's family with cfg.sample.kernel (checked against
    the family and, given the `algorithm`, against it too) on the model's components. Also what
    `python -m rlft.toy.geneval` evaluates a base model with."""
    family = policy_class(cfg.model)  # before the weights load: a bad class name fails at once
    options = family_options(cfg.model, family)  # the family's own (model.policy.<key>, e.g. SD3's max_sequence_length)
    kernel = family.check_kernel(build(cfg.sample.kernel, "sample.kernel"))
    if algorithm is not None:
        algorithm.check_kernel(kernel)
    components = build(cfg.model.components, "model.components")
    try:
        return family(
            components,
            kernel=kernel,
            **options,
            lora=cfg.model.lora,
            frozen_dtype=cfg.hardware.frozen_dtype,
            keep_reference=keep_reference,
            compile_unet=OmegaConf.to_container(cfg.perf.compile)
            if isinstance(cfg.perf.compile, DictConfig)
            else cfg.perf.compile,
            channels_last=cfg.perf.channels_last,
            gradient_checkpointing=cfg.perf.gradient_checkpointing,
        )
    except ValueError as error:  # peft's refusal of an adapter config (e.g. target modules the UNet lacks)
        if cfg.model.lora is None:
            raise
        lora = OmegaConf.to_container(cfg.model.lora, resolve=True)
        if "target modules" in str(error).lower():
            key, value = "model.lora.target_modules", lora.get("target_modules")
        else:
            key, value = "model.lora", lora
        raise ConfigError(f"{key}={value}: peft cannot add these adapters to the UNet ({error})") from error


def build_eval_reward(name: str):
    """The reward option `name` (conf/reward/<name>.yaml, or <dir>/reward/<name>.yaml of the user's
    config directories: rlft.config.config_dirs) as an eval reward; its keys are that file's, not the
    run's (no command-line key reaches them), and its errors say so."""
    path = option_path("reward", name)
    try:
        return build(load_option("reward", name), "")
    except ConfigError as error:
        shown = f"conf/reward/{name}.yaml" if path.parent.parent == CONFIG_DIR else str(path)
        raise ConfigError(f"eval_rewards=[{name}]: in {shown}, {error}") from error


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = []
    for node in cfg.logger.values():
        kwargs = {"save_dir": str(run_dir)}
        if str(node.get("_target_", "")).endswith("WandbLogger"):
            # One wandb run per rlft run directory: a resumed run continues the same wandb run.
            run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
            kwargs.update(id=run_id, resume="allow")
            if node.get("group") is None:
                kwargs["group"] = multirun_group()  # the jobs of one sweep side by side in wandb
        loggers.append(build(node, **kwargs))
    return loggers


def multirun_group() -> str | None:
    """The name of the sweep directory when this is a job of a Hydra multirun, else None.

    Taken from the job's own output directory (sweep.dir/subdir, resolved by Hydra for the job), not
    by resolving hydra.sweep.dir again: its ${now:...} could read another second in a job that a
    launcher runs in another process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    depth = len(Path(str(hydra_cfg.sweep.subdir)).parts)
    return Path(hydra_cfg.runtime.output_dir).parents[depth - 1].name


def record_config(cfg: DictConfig, run_dir: Path, loggers: list) -> None:
    """config.yaml in the run directory now, at the start (a run killed later keeps it; written
    whole or not at all), and the resolved config as every logger's hyperparameters: wandb's config
    panel (nested keys), TensorBoard's HPARAMS tab (flattened, train/learning_rate), the CSV
    logger's hparams.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    OmegaConf.save(cfg, tmp)
    os.replace(tmp, run_dir / "config.yaml")
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(params)
        logger.save()  # hparams.yaml and the event file on disk now, not when the run ends


def build_strategy(hw: DictConfig):
    """A strategy name (auto, ddp, ...) or a strategy node with _target_ (hardware=fsdp)."""
    if not isinstance(hw.strategy, DictConfig):
        return hw.strategy
    if "FSDP" in str(hw.strategy.get("_target_", "")) and hw.accelerator not in ("gpu", "cuda"):
        raise ConfigError(
            f"hardware=fsdp shards the model over CUDA GPUs (Lightning's FSDP runs on GPUs only), but "
            f"hardware.accelerator={hw.accelerator}; on a CPU use hardware=cpu (hardware.strategy=ddp for several processes)"
        )
    return build(hw.strategy)


def build_accelerator(hw: DictConfig):
    """Lightning's accelerator name, or for `tpu` rlft's PJRT accelerator (TPU, or PJRT_DEVICE=CPU
    for testing the XLA path), with torch-xla's persistent compile cache switched on."""
    if hw.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"hardware.accelerator={hw.accelerator}: no CUDA GPU is visible to this process "
            f"(torch.cuda.is_available() is False). {HARDWARE_HINT}"
        )
    if hw.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"hardware.accelerator=mps: this machine has no Apple GPU (MPS). {HARDWARE_HINT}")
    if hw.accelerator != "tpu":
        return hw.accelerator
    try:
        import torch_xla  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"hardware.accelerator=tpu needs torch-xla, which is not installed here ({error}); "
            "create the TPU environment with `make install-tpu` and run with .venv-xla/bin/python"
        ) from None
    from rlft.xla import PJRTAccelerator, initialize_compile_cache

    if hw.get("compile_cache"):
        initialize_compile_cache(Path(str(hw.compile_cache)).expanduser())
    return PJRTAccelerator()


def build_trainer(cfg: DictConfig, **settings) -> pl.Trainer:
    """Lightning's Trainer for an RL run on `cfg.hardware` (one step per epoch: the RL epoch);
    `settings` add or replace Trainer arguments (loggers, callbacks, ...)."""
    hw = cfg.hardware
    torch.backends.cuda.matmul.allow_tf32 = hw.allow_tf32
    torch.backends.cudnn.allow_tf32 = hw.allow_tf32
    arguments = {
        "accelerator": build_accelerator(hw),
        "devices": hw.devices,
        "num_nodes": hw.num_nodes,
        "strategy": build_strategy(hw),
        "precision": hw.precision,
        "max_epochs": cfg.epochs,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
    }
    try:
        return pl.Trainer(**{**arguments, **settings})
    except (MisconfigurationException, ValueError, TypeError, ImportError) as error:  # Lightning cannot run this setup
        strategy = hw.strategy if not isinstance(hw.strategy, DictConfig) else hw.strategy.get("_target_")
        raise ConfigError(
            f"hardware.accelerator={hw.accelerator} hardware.devices={hw.devices} hardware.num_nodes={hw.num_nodes} "
            f"hardware.strategy={strategy} hardware.precision={hw.precision}: {error} {HARDWARE_HINT}"
        ) from error


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run the configured training; returns the last epoch's metrics."""
    validate(cfg)
    quiet_known_warnings()
    no_library_progress_bars()
    run_dir = Path(run_dir)
    resumption = resumption_for(cfg, run_dir)
    checkpoint = None if resumption is None else resumption.checkpoint
    if resumption is not None:
        run_dir = resumption.run_dir  # continue the interrupted run in its own directory
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    loggers = build_loggers(cfg, run_dir)
    checkpoints = EpochCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch={epoch:04d}",
        auto_insert_metric_name=False,
        every_n_epochs=cfg.save_freq,
        save_last=True,
        monitor="epoch",
        mode="max",
        save_top_k=cfg.num_checkpoints,
    )
    trainer = build_trainer(
        cfg,
        logger=loggers,
        callbacks=[checkpoints, StopOnSigterm(run_dir), ReportCallback()],
        log_every_n_steps=1,
        default_root_dir=str(run_dir),
        plugins=cluster_plugins(),
    )  # before the model is built: hardware that is not there fails in seconds, not after loading it
    if trainer.is_global_zero:
        record_config(cfg, run_dir, loggers)
    module = build_module(cfg, run_dir)
    if resumption is not None and trainer.is_global_zero:
        first_epoch = resumption.finished_epochs
        log.info("resuming %s at epoch %d (run directory %s)", checkpoint, first_epoch, run_dir)
        trim_metrics(run_dir / "metrics.csv", first_epoch)
    # for the ranks Lightning starts during fit (children of this process), and for them only
    os.environ[RESUME_ENV] = f"{os.getpid()}:{checkpoint or ''}"
    try:
        with quiet_resume_warnings(resumption is not None):
            trainer.fit(module, ckpt_path=str(checkpoint) if checkpoint else None)
    finally:
        os.environ.pop(RESUME_ENV, None)
    if trainer.is_global_zero:
        record = RunRecord(
            config=OmegaConf.to_container(cfg, resolve=True),
            epochs_trained=int(module.history[-1]["epoch"]) + 1 if module.history else 0,
            history=module.history,
            showcase=module.showcase_results,
            run_dir=run_dir,
        )
        export_dir = export_run(module.policy, record, run_dir / "export")  # the same as `python -m rlft.export`
        log.info("exported the trained weights and their model card to %s", export_dir)
        # the run's result, for launchers that run it in other processes (launchers/)
        final = module.history[-1] if module.history else {}
        (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1))
        if module.showcase_results:
            (run_dir / "showcase.json").write_text(json.dumps(module.showcase_results, indent=1))
        refresh_report(module)  # report.html, now with the after showcase and the last epoch
    finish_wandb_run(loggers)
    return module.history[-1] if module.history else {}


def finish_wandb_run(loggers: list) -> None:
    """End this run's wandb run: Lightning's WandbLogger leaves it open, and a second rlft.train in
    the same process (a sweep in one process, a notebook) would then log into the first one."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()

"""Build a run from the composed config and fit it: rlft.train(cfg)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from rlft.config import build, load_option
from rlft.errors import ConfigError
from rlft.module import RLModule
from rlft.policy import Policy
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
    "sample.eta": float,
    "sample.guidance_scale": float,
    "sample.num_images_logged": int,
    "train.batch_size": int,
    "train.gradient_accumulation_steps": int,
    "train.num_inner_epochs": int,
    "train.timestep_fraction": float,
    "sample.images_per_prompt": int,
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
    "hardware.num_nodes": int,
    "hardware.allow_tf32": bool,
    "perf.channels_last": bool,
    "perf.gradient_checkpointing": bool,
}


def _check_types(cfg: DictConfig) -> None:
    for key, kind in TYPED_KEYS.items():
        value = OmegaConf.select(cfg, key)
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


def _quiet_known_warnings() -> None:
    """Silence warnings that are expected in every run and say nothing about this one."""
    # The frozen VAE / text encoder / UNet are kept in eval mode on purpose (no dropout anywhere).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*all_gather is deprecated.*")
    logging.getLogger("diffusers.models.modeling_utils").setLevel(logging.ERROR)


def find_checkpoint(resume: str | None, output_root: Path) -> Path | None:
    """`resume`: null (fresh run), `auto` (latest last.ckpt under output_root, if any), or a path
    to a checkpoint file or to a run directory."""
    if resume in (None, "", False):
        return None
    if str(resume) == "auto":
        candidates = sorted(output_root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        return candidates[-1] if candidates else None
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"resume={resume}: no checkpoint at {path}; give a .ckpt file, a run directory, or resume=auto"
        )
    return path


def trim_metrics(metrics_file: Path, first_epoch: int) -> None:
    """Drop rows of epochs the resumed run will redo (written after the checkpoint it resumes)."""
    if not metrics_file.is_file():
        return
    with metrics_file.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = (
            reader.fieldnames,
            [r for r in reader if not r.get("epoch") or int(float(r["epoch"])) < first_epoch],
        )
    tmp = metrics_file.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, metrics_file)


def build_module(cfg: DictConfig, run_dir: Path) -> RLModule:
    # Cheapest first: prompts (a text file), then rewards (the likeliest problem: missing weights),
    # so that a bad value is reported before minutes go into loading the model.
    prompts = build(cfg.prompt, "prompt")
    reward = build(cfg.reward, "reward")
    eval_rewards = {name: build_eval_reward(name) for name in cfg.eval_rewards}
    algorithm = build(cfg.algorithm, "algorithm")
    components = build(cfg.model.components, "model.components")
    try:
        policy = Policy(
            components,
            lora=cfg.model.lora,
            frozen_dtype=cfg.hardware.frozen_dtype,
            keep_reference=algorithm.needs_reference,
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
    return RLModule(cfg, policy, algorithm, prompts, reward, eval_rewards, run_dir)


def build_eval_reward(name: str):
    """The reward option `name` (conf/reward/<name>.yaml) as an eval reward; its keys are that
    file's, not the run's (no command-line key reaches them), and its errors say so."""
    try:
        return build(load_option("reward", name), "")
    except ConfigError as error:
        raise ConfigError(f"eval_rewards=[{name}]: in conf/reward/{name}.yaml, {error}") from error


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers = []
    for node in cfg.logger.values():
        kwargs = {"save_dir": str(run_dir)}
        if str(node.get("_target_", "")).endswith("WandbLogger"):
            # One wandb run per rlft run directory: a resumed run continues the same wandb run.
            run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
            kwargs.update(id=run_id, resume="allow")
        loggers.append(build(node, **kwargs))
    return loggers


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
    _quiet_known_warnings()
    output_root = Path(cfg.output_root)
    checkpoint = find_checkpoint(cfg.resume, output_root)
    run_dir = Path(run_dir)
    if checkpoint is not None and checkpoint.parent.name == "checkpoints":
        run_dir = checkpoint.parent.parent  # continue the interrupted run in its own directory
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, run_dir)
    loggers = build_loggers(cfg, run_dir)
    checkpoints = ModelCheckpoint(
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
        cfg, logger=loggers, callbacks=[checkpoints], log_every_n_steps=1, default_root_dir=str(run_dir)
    )
    if checkpoint is not None:
        first_epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] + 1
        if trainer.is_global_zero:
            log.info("resuming %s at epoch %d (run directory %s)", checkpoint, first_epoch, run_dir)
            trim_metrics(run_dir / "metrics.csv", first_epoch)
    elif cfg.resume == "auto":
        log.info("resume=auto: no checkpoint under %s, starting a new run", output_root)
    trainer.fit(module, ckpt_path=str(checkpoint) if checkpoint else None)
    if trainer.is_global_zero:
        export_dir = module.policy.export(run_dir / "export")
        log.info("exported the trained weights to %s", export_dir)
        OmegaConf.save(cfg, run_dir / "config.yaml")
        # the run's result, for launchers that run it in other processes (launchers/)
        final = module.history[-1] if module.history else {}
        (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1))
        if module.showcase_results:
            (run_dir / "showcase.json").write_text(json.dumps(module.showcase_results, indent=1))
    return module.history[-1] if module.history else {}

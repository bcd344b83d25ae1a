"""Which checkpoint a run continues (`resume=`), and whether it may.

The cluster pattern is a fixed run directory, `resume=auto` and a requeue: the job that comes back
must continue the run in its own directory, never another one. So `resume=auto` looks in the run
directory first; only a run directory Hydra made up (a new timestamped one) falls back to the newest
run under output_root that has the same settings and is not finished. A checkpoint whose model,
algorithm or reward differ from the command's is refused, naming the keys; a finished run says so.
"""

from __future__ import annotations

import csv
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from rlft.errors import ConfigError, RlftError

log = logging.getLogger("rlft")

# What a checkpoint given or found in the run directory must share with the command.
SAME_RUN = ("model", "algorithm", "reward")
# What a checkpoint found elsewhere under output_root must share to be taken for this run.
SAME_SETTINGS = (*SAME_RUN, "prompt", "sample", "train", "seed")


class RunFinished(RlftError):
    """The run asked for has already trained all its epochs: nothing to do (not an error)."""


@dataclass
class Resumption:
    checkpoint: Path
    finished_epochs: int  # epochs the checkpoint has trained (its epoch index + 1)
    run_dir: Path  # the directory of the run it continues


RESUME_FIX = "give the last.ckpt of an rlft run directory (or the directory itself), or resume=null for a new run"


def read_checkpoint(path: Path, label: str | None = None, fix: str = RESUME_FIX) -> dict:
    """The checkpoint's epoch and rlft state, or a ConfigError that starts with `label` (by default
    `resume=<path>`), says what is wrong and ends with `fix`. Memory-mapped: the weights are not read here."""
    label = label or f"resume={path}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).splitlines()[0][:160]
        raise ConfigError(
            f"{label}: cannot be read as a checkpoint ({type(error).__name__}: {reason}); {fix}"
        ) from None
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint or "config" not in checkpoint.get("rlft", {}):
        raise ConfigError(
            f"{label}: a torch file but not an rlft checkpoint (it has no epoch or rlft config); {fix}"
        )
    return checkpoint


def differences(saved: dict, cfg: DictConfig, groups: tuple[str, ...]) -> list[str]:
    """`key: checkpoint value -> command value` for every leaf of `groups` that differs."""
    current = OmegaConf.to_container(cfg, resolve=True)
    found: list[str] = []

    def compare(a, b, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b), key=str):
                compare(a.get(name, "<unset>"), b.get(name, "<unset>"), f"{key}.{name}")
        elif a != b:
            found.append(f"{key}: {a!r} -> {b!r}")

    for group in groups:
        compare(saved.get(group, "<unset>"), current.get(group, "<unset>"), group)
    return found


def _checked(path: Path, cfg: DictConfig, label: str) -> Resumption:
    """A checkpoint the command names or finds in its run directory: refused when it belongs to
    another run (model, algorithm, reward differ), RunFinished when it has nothing left to train."""
    checkpoint = read_checkpoint(path, label)
    changed = differences(checkpoint["rlft"]["config"], cfg, SAME_RUN)
    if changed:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ConfigError(
            f"{label}: the checkpoint is of another run (checkpoint -> this command: {shown}). Run with the checkpoint's settings to "
            "continue it, or start a new run in another directory (hydra.run.dir=..., resume=null)"
        )
    run = Resumption(path, int(checkpoint["epoch"]) + 1, run_dir_of(path))
    if run.finished_epochs >= cfg.epochs:
        raise RunFinished(
            f"the run in {run.run_dir} has already finished its {run.finished_epochs} epochs ({path}); nothing to "
            f"resume. To train it further set epochs above {run.finished_epochs}; for a new run choose another "
            "hydra.run.dir (or resume=null)"
        )
    return run


def resumption_at(path: Path) -> Resumption:
    """The resumption of the checkpoint at `path`, unchecked (rank 0 checked it)."""
    return Resumption(path, int(read_checkpoint(path)["epoch"]) + 1, run_dir_of(path))


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory of a checkpoint (the parent of its checkpoints/ folder)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def _search(output_root: Path, cfg: DictConfig, exclude: Path) -> Resumption | None:
    """The newest unfinished run under output_root with this command's settings (SAME_SETTINGS)."""
    candidates = sorted(output_root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    skipped = 0
    for path in candidates:
        if path.parent.parent.resolve() == exclude.resolve():
            continue
        try:
            checkpoint = read_checkpoint(path)
        except ConfigError:
            skipped += 1
            continue
        finished = int(checkpoint["epoch"]) + 1
        if finished >= cfg.epochs or differences(checkpoint["rlft"]["config"], cfg, SAME_SETTINGS):
            skipped += 1
            continue
        if skipped:
            log.info("resume=auto: passed over %d newer runs under %s (finished, or other settings)", skipped, output_root)
        return Resumption(path, finished, run_dir_of(path))
    if candidates:
        log.info("resume=auto: none of the %d runs under %s is unfinished with these settings", skipped, output_root)
    return None


def find_resumption(cfg: DictConfig, run_dir: Path, search_output_root: bool) -> Resumption | None:
    """What `cfg.resume` asks to continue: None for a new run.

    `resume`: null (a new run); `auto` (the run directory's last.ckpt if it has one; otherwise, when
    `search_output_root` (the run directory was not chosen by the user), the newest unfinished run
    under output_root with the same settings; otherwise a new run); or a checkpoint file or run
    directory."""
    resume = cfg.resume
    if resume in (None, "", False):
        return None
    if str(resume) == "auto":
        own = run_dir / "checkpoints" / "last.ckpt"
        if own.is_file():
            return _checked(own, cfg, f"resume=auto found {own}")
        found = _search(Path(cfg.output_root), cfg, run_dir) if search_output_root else None
        if found is None:
            log.info("resume=auto: no checkpoint to continue in %s, starting a new run there", run_dir)
        return found
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"resume={resume}: no checkpoint at {path}; give a .ckpt file, a run directory, or resume=auto"
        )
    return _checked(path, cfg, f"resume={resume}")


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


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, saving at the end of every epoch even when no optimizer step ran
    in it. Lightning skips a save when the global step has not moved since the last one; an RL epoch
    can end without a step (GRPO when every group scored its images alike) and still has to be saved:
    its epoch, random streams and algorithm state moved on, and without the save the run's
    last.ckpt would be an epoch behind (or, written at the end of training, an epoch ahead)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step_saved = -1  # (private to Lightning: what its step test reads)
        super().on_train_epoch_end(trainer, pl_module)


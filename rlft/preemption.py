"""Stopping on SIGTERM, what SLURM and TPU preemption send before they kill a job.

An RL epoch of a real model takes minutes and cannot be checkpointed half-way (its samples and
the optimizer's steps within it would be lost or half-applied), so on SIGTERM the run stops at once
and keeps the checkpoint of its last finished epoch, which ModelCheckpoint wrote atomically at that
epoch's end. Lightning's own SIGTERM handling waits for the epoch to end, which can outlast a
preemption's grace period; this callback replaces it for the time of the fit.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning.pytorch as pl


class Preempted(BaseException):
    """The run stopped on SIGTERM. A BaseException, like KeyboardInterrupt: no `except Exception`
    on the way up (a reward's retry loop, a library) may swallow it."""

    def __init__(self, epoch: int, rank: int, run_dir: Path):
        self.epoch, self.rank, self.run_dir = epoch, rank, run_dir
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        self.checkpoint = checkpoint if checkpoint.is_file() else None
        super().__init__(f"stopped by SIGTERM during epoch {epoch}")


class StopOnSigterm(pl.Callback):
    """On SIGTERM: raise Preempted now if the run is inside an epoch's work (rollout, reward, update,
    the showcase), or at the next epoch's start if the signal came while a checkpoint was written,
    so that no checkpoint is ever cut short."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.interruptible = False
        self.received = False
        self._trainer: pl.Trainer | None = None
        self._previous = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed here, after Lightning registered its own SIGTERM handler at the start of fit.
        self._trainer = trainer
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.interruptible = True  # the "before" showcase runs next

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.received:
            self._stop()
        self.interruptible = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.interruptible = False  # the epoch's end: metrics, then the checkpoint

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        if not self.received and self._trainer is not None:
            launcher = self._trainer.strategy.launcher
            if launcher is not None:  # rank 0 of a Lightning-launched DDP job: pass it to the other ranks
                launcher.kill(signum)
        self.received = True
        if self.interruptible:
            self._stop()

    def _stop(self) -> None:
        self.interruptible = False
        trainer = self._trainer
        raise Preempted(trainer.current_epoch, trainer.global_rank, self.run_dir)


def cluster_plugins() -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: on SIGUSR1 that writes a
    checkpoint in the middle of an epoch (weights half-way through its updates) and requeues the job
    itself. rlft's pattern is SLURM's own requeue (`--requeue`) of a fixed run directory with
    resume=auto, resuming the last finished epoch. (Not run under SLURM in this project.)"""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []

"""Loggers: a CSV logger whose metrics.csv survives a resume, and a TensorBoard logger whose
HPARAMS tab shows the run's config against its reward.

Lightning's CSV writer deletes an existing metrics.csv when it opens a non-empty directory, which
would erase a resumed run's earlier epochs. This one keeps the file and appends to it (rlft.train
first drops the rows of epochs that the resumed run will redo).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class HparamsTensorBoardLogger(TensorBoardLogger):
    """TensorBoard whose HPARAMS tab lists the run's config beside the run's own series named in
    `hparams_metrics` (the tab shows their latest values).

    Lightning's TensorBoardLogger writes hyperparameters to the event file only with metrics, and
    without any it logs a placeholder series, hp_metric = -1. This one links the tab to real series
    instead and writes no value of its own."""

    def __init__(self, *args, hparams_metrics: Sequence[str] = ("reward_mean",), **kwargs):
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(*args, **kwargs)
        self.hparams_metrics = list(hparams_metrics)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        super().log_hyperparams(params, metrics, step)  # kept for hparams.yaml (and events, given metrics)
        if metrics is not None or self._default_hp_metric or not self.hparams_metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))  # keys "train/learning_rate"
        writer = self.experiment._get_file_writer()
        for summary in hparams(flat, dict.fromkeys(self.hparams_metrics, 0.0)):  # (the values are not written)
            writer.add_summary(summary)

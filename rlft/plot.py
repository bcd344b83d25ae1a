"""`python -m rlft.plot RUN_DIR[=LABEL] ... --metrics reward_mean eval_toy_shape_mean --out plot.png`

Curves of per-epoch metrics (each run's metrics.csv) side by side, one panel per metric and one
line per run, and a table of each metric's first and last values (mean of the first and last
`--window` epochs) on stdout. Used by the over-optimization study (README, `make study`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def read_metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """Columns of a run's metrics.csv as float arrays, one row per epoch (empty cells are NaN)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"rlft.plot: no metrics.csv in {run_dir}; give run directories of CSV-logged runs")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    columns = rows[0].keys() if rows else []
    return {c: np.array([float(r[c]) if r[c] != "" else np.nan for r in rows]) for c in columns}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def summary(runs: dict[str, dict[str, np.ndarray]], metrics: list[str], window: int) -> str:
    lines = [f"| run | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
    for label, columns in runs.items():
        cells = []
        for metric in metrics:
            values = columns.get(metric)
            if values is not None:  # a metric measured every few epochs (geneval.every) is NaN between
                values = values[np.isfinite(values)]
            if values is None or not len(values):
                cells.append("-")
                continue
            cells.append(f"{np.nanmean(values[:window]):.3f} -> {np.nanmean(values[-window:]):.3f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[str, np.ndarray]], metrics: list[str], out: Path, smooth: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for label, columns in runs.items():
            if metric in columns:
                values = columns[metric]
                measured = np.isfinite(values)  # epochs without a measurement are NaN: left out, not gaps
                sparse = not measured.all()
                axis.plot(columns["epoch"][measured], moving_average(values[measured], 1 if sparse else smooth),
                          label=label, marker="o" if sparse else None, markersize=3)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlft.plot", description=__doc__.splitlines()[2])
    parser.add_argument("runs", nargs="+", help="run directories, each optionally as DIR=LABEL")
    parser.add_argument("--metrics", nargs="+", default=["reward_mean"])
    parser.add_argument("--out", type=Path, default=Path("plot.png"))
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window in epochs")
    parser.add_argument("--window", type=int, default=3, help="epochs averaged for the first/last table")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        directory, _, label = spec.partition("=")
        runs[label or Path(directory).name] = read_metrics(Path(directory))
    plot(runs, args.metrics, args.out, args.smooth, args.title)
    print(summary(runs, args.metrics, args.window))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

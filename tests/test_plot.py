"""`python -m rlft.plot`: curves of metrics.csv columns per run, and the first/last table."""

import subprocess
import sys

from PIL import Image


def write_run(directory, rewards, shapes):
    directory.mkdir()
    lines = ["epoch,reward_mean,eval_toy_shape_mean"]
    lines += [f"{e},{r},{s}" for e, (r, s) in enumerate(zip(rewards, shapes, strict=True))]
    (directory / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_plot_draws_each_metric_and_tabulates_first_and_last(tmp_path):
    write_run(tmp_path / "a", [0.1, 0.2, 0.3, 0.5], [0.8, 0.8, 0.6, 0.4])
    write_run(tmp_path / "b", [0.1, 0.1, 0.2, 0.2], [0.8, 0.8, 0.8, 0.9])
    out = tmp_path / "study.png"
    result = subprocess.run(
        [sys.executable, "-m", "rlft.plot", f"{tmp_path / 'a'}=DDPO", f"{tmp_path / 'b'}=TDPO-R"]
        + ["--metrics", "reward_mean", "eval_toy_shape_mean", "--window", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| DDPO | 0.150 -> 0.400 | 0.800 -> 0.500 |" in result.stdout
    assert "| TDPO-R | 0.100 -> 0.200 | 0.800 -> 0.850 |" in result.stdout
    with Image.open(out) as image:
        width, height = image.size
    assert width > 1.8 * height  # two panels side by side


def test_plot_names_a_directory_without_metrics(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rlft.plot", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and f"no metrics.csv in {tmp_path}" in result.stderr

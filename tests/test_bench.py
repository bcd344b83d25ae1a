"""`make bench` runs on the tiny model and prints its table (figures only: no timing is asserted)."""

import subprocess
import sys


def test_bench_prints_a_row_for_the_tiny_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rlft.bench", "--models", "tiny", "--settings", "small"]
        + ["--warmup", "0", "--repeats", "1", "--no-scaling"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("tiny")]
    fields = row.replace("±", " ").split()
    epoch, sampling, training, floor, ratio, sampling_ratio = (float(fields[i]) for i in (2, 4, 8, 11, 13, 14))
    assert 0 < sampling + training <= epoch and floor > 0
    assert abs(ratio - epoch / floor) < 0.02  # one epoch: the median ratio is this epoch's
    assert sampling_ratio > 0

"""`make bench` prints its table for the tiny SD3 flow model, trained with GRPO (figures only: no
timing is asserted). SD 1.x's floor runs in tests/test_gpu_check.py's tiny path, which measures its
epochs against rlft.bench.compute_floor."""

import subprocess
import sys

from rlft.bench import model_overrides


def test_bench_prints_a_row_for_the_tiny_flow_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rlft.bench", "--models", "tiny_sd3", "--settings", "small"]
        + ["--warmup", "0", "--repeats", "1", "--no-scaling"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("tiny_sd3")]
    fields = row.replace("±", " ").split()
    assert fields[1:3] == ["grpo", "small"]
    epoch, sampling, training, floor, ratio, sampling_ratio, training_ratio, best = (
        float(fields[i]) for i in (3, 5, 9, 12, 14, 15, 16, 17)
    )
    assert 0 < sampling + training <= epoch and floor > 0
    assert abs(ratio - epoch / floor) < 0.02  # one epoch: the median ratio is this epoch's
    assert abs(best - ratio) < 0.02  # and so is the fastest one's
    assert sampling_ratio > 0 and training_ratio > 0


def test_each_model_runs_its_algorithm_unless_the_overrides_choose_one():
    assert model_overrides("tiny", []) == ["model=tiny"]
    assert model_overrides("tiny_sd3", ["hardware=gpu"]) == ["model=tiny_sd3", "algorithm=grpo"]
    assert model_overrides("tiny_sd3", ["algorithm=rwr"]) == ["model=tiny_sd3"]

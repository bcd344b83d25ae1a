"""SIGTERM (SLURM's and TPU preemption's notice): the run stops at once, keeps its last finished
epoch's checkpoint, says so in one line with the command that resumes it, and that command works."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import pinned

# Epochs of several seconds: waiting for the interrupted one to end would be seen.
ARGS = [
    "epochs=2",
    "sample.batch_size=4",
    "sample.num_batches_per_epoch=4",
    "sample.num_steps=20",
    "train.batch_size=4",
    "train.gradient_accumulation_steps=1",
]


@pytest.mark.slow
def test_sigterm_stops_at_once_keeps_the_last_epoch_and_says_how_to_resume(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rlft", *pinned([*ARGS, f"output_root={out}"])],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list(out.glob("runs/*/checkpoints/epoch=0000.ckpt")):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # well inside epoch 1
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    took = time.time() - sent
    assert process.returncode == 143, stderr[-3000:]
    assert took < 15, f"exited {took:.1f} s after SIGTERM"  # measured about 2 s; an epoch here takes longer
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("rlft: ")]
    assert "stopped by SIGTERM during epoch 1" in line and "kept the checkpoint of epoch 0" in line
    (run_dir,) = (out / "runs").iterdir()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "rlft"] and f"hydra.run.dir={run_dir}" in command
    resumed = subprocess.run(
        [sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert [row.split(",")[rows[0].split(",").index("epoch")] for row in rows[1:]] == ["0", "1"]

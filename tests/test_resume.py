"""A run killed after epoch k and resumed reproduces the uninterrupted run's later epochs."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import pinned, run_cli

ARGS = [
    "epochs=6",
    "sample.batch_size=4",
    "sample.num_batches_per_epoch=2",
    "sample.num_steps=5",
    "train.batch_size=2",
    "train.gradient_accumulation_steps=2",
    "reward=brightness",
]
COMPARED = {
    "ddpo": ["reward_mean", "reward_std", "loss", "approx_kl", "clipfrac", "ratio"],
    # TDPO-R resets the critic every 2 epochs: the critic, its optimizer, the running moments and
    # the recycler's last mask all have to come back for these to match
    "tdpo_r": ["reward_mean", "reward_std", "loss", "pg_loss", "cf_loss", "value_mean", "dormant_fraction"],
}
ALGORITHM_ARGS = {"ddpo": [], "tdpo_r": ["algorithm=tdpo_r", "algorithm.neuron_reset_freq=2"]}


def metrics(run_dir, algorithm="ddpo"):
    with (run_dir / "metrics.csv").open() as f:
        return [{k: row[k] for k in ["epoch", *COMPARED[algorithm]]} for row in csv.DictReader(f)]


def only_run(root):
    (run_dir,) = (root / "runs").iterdir()
    return run_dir


@pytest.mark.parametrize("algorithm", ["ddpo", "tdpo_r"])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, algorithm):
    args = [*ARGS, *ALGORITHM_ARGS[algorithm]]
    straight = tmp_path / "straight"
    run_cli([*args, f"output_root={straight}"], cwd=tmp_path)
    expected = metrics(only_run(straight), algorithm)
    assert [row["epoch"] for row in expected] == [str(e) for e in range(6)]

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rlft", *pinned(args), f"output_root={interrupted}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(interrupted.glob("runs/*/checkpoints/epoch=0001.ckpt")):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = only_run(interrupted)
    done = len(metrics(run_dir, algorithm))
    assert done < 6, "killed too late to test anything"

    result = run_cli([*args, f"output_root={interrupted}", "resume=auto"], cwd=tmp_path)
    assert "resuming" in result.stdout + result.stderr
    # continued in place: the resumed invocation's own Hydra directory holds only its config and log
    others = [d for d in (interrupted / "runs").iterdir() if d != run_dir]
    assert len(others) == 1 and not (others[0] / "metrics.csv").exists()
    assert metrics(run_dir, algorithm) == expected  # every epoch, before and after the kill, identical


def test_resume_from_an_explicit_path_and_a_missing_one(tmp_path):
    first = tmp_path / "first"
    small = ["sample.num_steps=2", "sample.num_batches_per_epoch=1", "train.gradient_accumulation_steps=2"]
    run_cli(["epochs=1", *small, f"output_root={first}"], cwd=tmp_path)
    run_dir = only_run(first)
    result = run_cli(["epochs=2", *small, f"output_root={first}", f"resume={run_dir}"], cwd=tmp_path)
    assert "resuming" in result.stdout + result.stderr
    assert [row["epoch"] for row in metrics(run_dir)] == ["0", "1"]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    run_cli(["epochs=3", *small, f"output_root={first}", f"resume={checkpoint}"], cwd=tmp_path)
    assert [row["epoch"] for row in metrics(run_dir)] == ["0", "1", "2"]

    missing = run_cli(["epochs=1", f"output_root={tmp_path / 'x'}", "resume=/no/such.ckpt"], cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "resume=/no/such.ckpt: no checkpoint" in missing.stderr


@pytest.mark.parametrize("resume", ["auto"])
def test_resume_auto_without_runs_starts_fresh(tmp_path, resume):
    result = run_cli(["epochs=1", "sample.num_steps=2", f"output_root={tmp_path}", f"resume={resume}"], cwd=tmp_path)
    assert "starting a new run" in result.stdout + result.stderr

"""`python -m rlft -m seed=0,1 ...` really launches both jobs, each in its own directory."""

import csv
import json
import sys

import pytest
import yaml

from tests.conftest import FAST, compose_config, run_cli


def test_multirun_over_seeds(tmp_path):
    run_cli(["-m", "seed=0,1", *FAST, f"output_root={tmp_path}"], cwd=tmp_path)
    (sweep,) = (tmp_path / "multirun").iterdir()
    rewards = []
    for job in ("0", "1"):
        with (sweep / job / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1
        rewards.append(rows[0]["reward_mean"])
        assert (sweep / job / "export").is_dir()
        assert "seed=" + job in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    assert rewards[0] != rewards[1]  # different seeds, different samples


def test_optuna_search_maximizes_the_returned_reward(tmp_path):
    run_cli(
        ["-m", "hparams_search=ddpo_optuna", "hydra.sweeper.n_trials=3", *FAST, f"output_root={tmp_path}"],
        cwd=tmp_path,
    )
    (sweep,) = (tmp_path / "multirun").iterdir()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trial_rewards = []
    for job in ("0", "1", "2"):
        with (sweep / job / "metrics.csv").open() as f:
            trial_rewards.append(float(list(csv.DictReader(f))[-1]["reward_mean"]))
    assert results["best_value"] == pytest.approx(max(trial_rewards))
    assert set(results["best_params"]) == {
        "train.learning_rate",
        "algorithm.clip_range",
        "train.num_inner_epochs",
    }


def test_slurm_hardware_runs_through_submitit(tmp_path):
    """hardware=slurm with submitit's local executor instead of a cluster: the job really goes
    through submitit (pickled, started in its own process, result collected)."""
    run_cli(
        [
            "-m",
            "hardware=slurm",
            "hydra/launcher=submitit_local",
            "hardware.accelerator=cpu",
            "hardware.devices=1",
            "hardware.precision=32-true",
            "hardware.frozen_dtype=float32",
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=2",
            "hydra.launcher.timeout_min=10",
            *FAST,
            f"output_root={tmp_path}",
        ],
        cwd=tmp_path,
    )
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitit ran the job and kept its result
    with (sweep / "0" / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1


def test_slurm_preset_composes_for_a_cluster():
    cfg = compose_config(["hardware=slurm", "hardware.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert (cfg.hardware.strategy, cfg.hardware.num_nodes) == ("ddp", 2)


def test_process_group_launcher_runs_ddp_jobs_side_by_side(tmp_path):
    """hydra/launcher=rlft_process_group: a 2-job sweep where each job is 2 gloo processes (torchrun
    style, no Hydra re-entry), both jobs at once."""
    result = run_cli(
        [
            "-m",
            "hydra/launcher=rlft_process_group",
            "hydra.launcher.processes_per_job=2",
            "hydra.launcher.max_parallel_jobs=2",
            "hardware.strategy=ddp",
            "seed=0,1",
            *FAST,
            f"output_root={tmp_path}",
        ],
        cwd=tmp_path,
    )
    (sweep,) = (tmp_path / "multirun").iterdir()
    for job in ("0", "1"):
        with (sweep / job / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and rows[0]["samples"] == "8.0"  # 2 ranks x 4 samples
        assert (sweep / job / "rank1.log").is_file() and (sweep / job / "final_metrics.json").is_file()
        assert f"seed={job}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    # side by side: the second job had started before the first one finished
    assert (sweep / "1" / ".hydra" / "config.yaml").stat().st_mtime < (
        sweep / "0" / "final_metrics.json"
    ).stat().st_mtime
    assert "Traceback" not in result.stderr


def test_tpu_pod_launcher_copies_starts_and_collects(tmp_path, fake_pod):
    """hydra/launcher=rlft_tpu_pod against a `gcloud` that runs each of 2 'workers' in its own
    directory on this machine: the code and each job's config reach every worker, every worker runs
    the job, worker 0's output streams back, and its results come home."""
    calls = fake_pod / "calls.jsonl"
    result = run_cli(
        [
            "-m",
            "hydra/launcher=rlft_tpu_pod",
            "hydra.launcher.tpu_name=test-pod",
            "hydra.launcher.zone=us-central2-b",
            f"hydra.launcher.python={sys.executable}",
            "hydra.launcher.env.PJRT_DEVICE=CPU",
            "+hydra.launcher.env.RLFT_TEST_MARK=1",
            "seed=0,1",
            *FAST,
            f"output_root={tmp_path / 'out'}",
        ],
        cwd=tmp_path,
    )
    commands = [json.loads(line) for line in calls.read_text().splitlines()]
    assert all(c[:3] == ["compute", "tpus", "tpu-vm"] and "--zone=us-central2-b" in c for c in commands)
    starts = [c for c in commands if c[3] == "ssh" and "--worker=all" in c and "-m rlft" in " ".join(c)]
    assert len(starts) == 2  # one start per job, on all workers at once
    assert "PJRT_DEVICE=CPU" in " ".join(starts[0]) and "RLFT_TEST_MARK=1" in " ".join(starts[0])
    code_copies = [c for c in commands if c[3] == "scp" and c[4].endswith("code.tar.gz")]
    assert len(code_copies) == 1 and "--worker=all" in code_copies[0]  # code shipped once per launch

    (sweep,) = (tmp_path / "out" / "multirun").iterdir()
    for job in ("0", "1"):
        for worker in ("worker0", "worker1"):  # every worker ran the job from the shipped code
            (remote,) = (fake_pod / worker / "rlft" / "runs").glob(f"*_{job}")
            assert (remote / "final_metrics.json").is_file()
            assert yaml.safe_load((remote / "launch" / "config.yaml").read_text())["seed"] == int(job)
        assert (fake_pod / "worker1" / "rlft" / "code" / "rlft" / "train.py").is_file()
        assert not list((fake_pod / "worker0" / "rlft" / "code").glob(".venv*"))
        local = sweep / job
        final = json.loads((local / "final_metrics.json").read_text())  # collected from worker 0
        with (local / "metrics.csv").open() as f:
            assert float(list(csv.DictReader(f))[-1]["reward_mean"]) == pytest.approx(final["reward_mean"])
        assert "epoch 0: reward_mean=" in (local / "tpu_pod.log").read_text()  # worker 0's stream
    assert result.stdout.count("epoch 0: reward_mean=") == 2  # rank 0's output only, once per job


def test_tpu_pod_launcher_reports_a_failed_job(tmp_path, fake_pod):
    result = run_cli(
        [
            "-m",
            "hydra/launcher=rlft_tpu_pod",
            "hydra.launcher.tpu_name=test-pod",
            "hydra.launcher.zone=z",
            "hydra.launcher.python=/nonexistent/python",
            f"output_root={tmp_path / 'out'}",
        ],
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "job #0 failed on test-pod" in result.stderr

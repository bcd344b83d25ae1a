"""Shared helpers: compose rlft configs in-process and run the CLI in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# Before anything imports huggingface_hub, which reads these once: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR, on_experiment

# A run small enough for a smoke test: 4 samples of 3 steps, one epoch.
FAST = [
    "epochs=1",
    "sample.batch_size=2",
    "sample.num_batches_per_epoch=2",
    "sample.num_steps=3",
    "train.batch_size=2",
    "train.gradient_accumulation_steps=1",
    "showcase.samples=0",  # (model=toy brings a 256-sample showcase; a test that wants one sets it)
]


def pinned(overrides: list[str]) -> list[str]:
    """The overrides on the jpeg demo's base (experiment=demo, the tiny model) unless they choose an
    experiment: tests are sized for it, and the default run (the toy demo) may change."""
    return on_experiment(overrides, "demo")


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=pinned(overrides), return_hydra_config=return_hydra_config)


# What a run must not print: warnings, and the libraries' notices that rlft/quiet.py drops (Lightning's
# litlogger/litmodels tips, transformers' torchvision fallback, diffusers' float32 notice).
# (`path.py:123: message` is how Lightning prints its warnings, without their category.)
NOISE = re.compile(r"warn|\.py:\d+: |tip:|litlogger|litmodels|torchvision|deprecat|float32", re.IGNORECASE)


def noise(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of a run's output (stdout and stderr; Hydra logs to stdout too) that are noise."""
    return [line for line in (result.stdout + result.stderr).splitlines() if NOISE.search(line)]


def run_cli(args: list[str], cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "rlft", *pinned(args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"rlft {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def fake_pod(tmp_path, monkeypatch) -> Path:
    """A 2-worker TPU pod on this machine: tests/fake_gcloud/gcloud first on PATH, each worker a
    directory under the returned root; every gcloud call is logged to <root>/calls.jsonl."""
    root = tmp_path / "pod"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{Path(__file__).parent / 'fake_gcloud'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(root / "calls.jsonl"))
    monkeypatch.setenv("FAKE_TPU_ROOT", str(root))
    monkeypatch.setenv("FAKE_TPU_WORKERS", "2")
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow run first. The xdist workers take tests in collection order, so a
    two-minute learning test collected late leaves one worker running it alone at the end (a CI run
    took 13 min 37 s with the same CPU time as one of 11 min 13 s)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

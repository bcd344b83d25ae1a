"""The TPU code path, run by torch-xla on its CPU backend (PJRT_DEVICE=CPU): `make test-xla`.

Skipped in the default environment (torch 2.13 cannot load torch-xla 2.9;
docs/environment.md#torch-xla-in-its-own-environment).
"""

import csv
import math
import os

import pytest
import torch

torch_xla = pytest.importorskip("torch_xla")

from rlft.streams import RandomStream
from rlft.xla import compile_count
from tests.conftest import run_cli
from tests.test_policy import make_policy

SHORT = [
    "hardware=tpu",
    "epochs=3",
    "sample.batch_size=2",
    "sample.num_batches_per_epoch=2",
    "sample.num_steps=3",
    "train.batch_size=2",
    "train.gradient_accumulation_steps=1",
]


def read_metrics(output_root):
    (metrics,) = output_root.glob("runs/*/metrics.csv")
    with metrics.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "algorithm", [["algorithm=ddpo"], ["algorithm=tdpo_r", "algorithm.neuron_reset_freq=1"]], ids=["ddpo", "tdpo_r"]
)
def test_short_run_compiles_every_graph_once(tmp_path, algorithm):
    """Every graph is compiled in the first epoch; later epochs (sampling, training, a neuron reset,
    a checkpoint) reuse them: the logged compile count stays flat. The compile cache is written."""
    cache = tmp_path / "xla_cache"
    run_cli(
        [*SHORT, *algorithm, f"hardware.compile_cache={cache}", f"output_root={tmp_path / 'out'}"],
        cwd=tmp_path,
        timeout=900,
    )
    rows = read_metrics(tmp_path / "out")
    compiles = [float(row["xla_compiles"]) for row in rows]
    assert len(compiles) == 3 and compiles[0] > 0
    assert compiles[1:] == [compiles[0]] * 2, f"graphs recompiled after the first epoch: {compiles}"
    assert all(math.isfinite(float(row["reward_mean"])) for row in rows)
    assert any(cache.iterdir())  # the persistent compile cache
    assert list((tmp_path / "out").glob("runs/*/checkpoints/last.ckpt"))


def test_importance_ratio_is_one_on_xla():
    """Sampling and training evaluate the policy through the same graph: ratio 1 before any update."""
    from rlft.trajectories import rescore, training_batches
    from tests.test_policy import sample

    device = torch_xla.device()
    policy = make_policy("tiny").to(device)
    trajectories = sample(policy)
    trajectories.advantages = trajectories.advantages.to(device)
    batch = training_batches(trajectories, batch_size=2, num_timesteps=4, stream=RandomStream(1))[0]
    for j in range(4):
        step = batch.column(j)
        ratio = torch.exp(rescore(policy, step, 5.0) - step.log_probs).cpu()
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)


def test_xla_samples_match_eager_cpu():
    """The same seeds give the same trajectories on XLA as in eager PyTorch (float32)."""
    from tests.test_policy import sample

    eager = sample(make_policy("tiny"))
    on_xla = sample(make_policy("tiny").to(torch_xla.device()))
    assert on_xla.chain.device.type == "xla" and compile_count() > 0
    torch.testing.assert_close(on_xla.log_probs.cpu(), eager.log_probs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_xla.chain.cpu(), eager.chain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_xla.images, eager.images, rtol=1e-4, atol=1e-4)


def test_accelerator_counts_pjrt_cpu_devices():
    """Lightning's own XLA accelerator only counts TPU chips; rlft's also runs on PJRT_DEVICE=CPU."""
    from rlft.xla import PJRTAccelerator

    assert os.environ["PJRT_DEVICE"] == "CPU"
    assert PJRTAccelerator.is_available()
    assert PJRTAccelerator.parse_devices("auto") == PJRTAccelerator.auto_device_count() >= 1
    assert PJRTAccelerator.get_parallel_devices(1) == [torch.device("xla", 0)]


def test_tpu_pod_launch_runs_the_xla_path_on_every_worker(tmp_path, fake_pod):
    """`hardware=tpu_pod` (what `make tpu-train` runs) against the recording fake `gcloud`: every
    worker runs the shipped code on the XLA path (PJRT_DEVICE=CPU here, TPU on a pod) and worker 0's
    results come home."""
    import sys

    run_cli(
        [
            "-m",
            "hardware=tpu_pod",
            "hydra.launcher.tpu_name=test-pod",
            "hydra.launcher.zone=us-central2-b",
            "hydra.launcher.setup=[]",  # the workers' environment is this one
            f"hydra.launcher.python={sys.executable}",
            "hydra.launcher.env.PJRT_DEVICE=CPU",
            "hardware.compile_cache=null",
            *SHORT[1:],
            "epochs=1",
            f"output_root={tmp_path / 'out'}",
        ],
        cwd=tmp_path,
        timeout=900,
    )
    for worker in ("worker0", "worker1"):
        (remote,) = (fake_pod / worker / "rlft" / "runs").glob("*_0")
        with (remote / "metrics.csv").open() as f:
            assert float(next(iter(csv.DictReader(f)))["xla_compiles"]) > 0  # ran on the XLA path
    (job,) = (tmp_path / "out" / "multirun").glob("*/0")
    assert (job / "final_metrics.json").is_file() and (job / "images").is_dir()

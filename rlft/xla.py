"""XLA (TPU) support: graph cuts, compile counts, the compile cache, and Lightning's accelerator.

torch-xla traces operations lazily and compiles each distinct graph once. rlft cuts the graph after
every sampler step and every training micro-step (`sync`), keeps shapes static, and feeds loop
indices (timesteps, columns) as tensors rather than Python constants, so the same few graphs are
reused for every step of every epoch; `compile_count` makes that visible in the logged metrics.

torch-xla is an optional install (`make install-tpu`); nothing here imports it unless the run is on
an XLA device.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.accelerators import XLAAccelerator


def is_xla(device: torch.device | str) -> bool:
    return torch.device(device).type == "xla"


def sync(device: torch.device | str) -> None:
    """Cut the lazy graph here and run it (a no-op on other devices)."""
    if is_xla(device):
        import torch_xla

        torch_xla.sync()


def seed_device(device: torch.device | str, seed: int) -> None:
    """Seed XLA's own generator, which torch.manual_seed does not reach (a no-op on other devices).
    Written from torch-xla's API; it has not run on a TPU in this project."""
    if is_xla(device):
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(seed, device=device)


def compile_count() -> int | None:
    """Graphs compiled so far in this process (torch-xla's CompileTime metric); None without XLA."""
    try:
        from torch_xla.debug import metrics
    except ImportError:
        return None
    data = metrics.metric_data("CompileTime")
    return int(data[0]) if data else 0


def initialize_compile_cache(path: str | Path) -> None:
    """torch-xla's persistent compile cache (must come before the first XLA computation)."""
    import torch_xla.runtime as xr

    Path(path).mkdir(parents=True, exist_ok=True)
    xr.initialize_cache(str(path), readonly=False)


class PJRTAccelerator(XLAAccelerator):
    """Lightning's XLA accelerator for any PJRT device type.

    Lightning counts devices by asking the TPU runtime, so its accelerator refuses PJRT_DEVICE=CPU,
    the backend on which torch-xla's path can be run without a TPU (as `make test-xla` does). On a
    TPU this defers to Lightning; on another PJRT device it counts that runtime's devices.
    """

    @staticmethod
    def _on_tpu() -> bool:
        return os.environ.get("PJRT_DEVICE", "TPU").upper() == "TPU"

    @staticmethod
    def auto_device_count() -> int:
        if PJRTAccelerator._on_tpu():
            return XLAAccelerator.auto_device_count()
        return int(os.environ.get("CPU_NUM_DEVICES", os.environ.get("GPU_NUM_DEVICES", "1")))

    @staticmethod
    def is_available() -> bool:
        if PJRTAccelerator._on_tpu():
            return XLAAccelerator.is_available()
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> int | list[int]:
        if PJRTAccelerator._on_tpu():
            return XLAAccelerator.parse_devices(devices)
        count = PJRTAccelerator.auto_device_count()
        if devices in ("auto", -1, "-1"):
            return count
        return int(devices) if not isinstance(devices, list) else devices

    @staticmethod
    def get_parallel_devices(devices: int | list[int]) -> list[torch.device]:
        if PJRTAccelerator._on_tpu():
            return XLAAccelerator.get_parallel_devices(devices)
        devices = PJRTAccelerator.parse_devices(devices)
        if isinstance(devices, int):
            return [torch.device("xla", i) for i in range(devices)]
        return [torch.device("xla", devices[0])]

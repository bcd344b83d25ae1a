"""Random streams: the one rule for where rlft's random draws happen.

Every draw of a run (sampler noise, prompt-order shuffles, timestep permutations, RWR's timesteps
and noise, TDPO-R's neuron resets, the showcase's noise) comes from a `RandomStream`, which holds a
CPU `torch.Generator`, draws on the host and moves the values to the device the caller names.

Why the host, on every accelerator:
- it is right by construction: PyTorch refuses a CUDA generator for a CPU draw (`randperm`,
  `randint` without a device) and XLA has no device generators at all, so a stream that lives on
  the run's device breaks some draw on some accelerator;
- a seed means the same numbers on a CPU, a GPU and a TPU, so runs compare across machines;
- resume stays exact: each stream is seeded from (seed, rank, epoch, stream id) by `stream_seed`,
  never carried forward, so epoch k draws the same values whether or not the run was interrupted.

The cost is a host-to-device copy per draw; the largest, a sampler step's noise, is one latent
batch (8 x 4 x 64 x 64 float32 = 0.5 MB for SD 1.5 at 512 px), small beside a UNet call.

No other module of rlft calls torch's random functions (tests/test_streams.py checks the source).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Stream ids of one epoch (the last part of stream_seed's key). LIBRARIES seeds torch's global
# generators for the draws that library code makes from them (the critic's dropout).
NOISE, PROMPTS, SHUFFLE, LIBRARIES = 0, 1, 2, 3

Device = torch.device | str | None


def stream_seed(*parts: int) -> int:
    """A 63-bit seed for one random stream, derived from its key (seed, rank, epoch, stream id)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_global_generators(seed: int) -> None:
    """Seed torch's global generators (the CPU's and every CUDA device's) for library code that draws
    from them itself, such as dropout: seeded per epoch from the epoch's key, those draws too are the
    same after a resume, on any device and rank, without saving per-device generator states."""
    torch.manual_seed(seed)


class RandomStream:
    """Draws from a CPU generator seeded with `seed`; each result is moved to `device`.

    The draws are those of `torch.Generator().manual_seed(seed)` in the same order, so switching a
    call site to a stream does not change the numbers it gets on the CPU.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)

    def normal(self, shape: Sequence[int], device: Device = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal values of `shape`, drawn in float32 and then cast to `dtype`."""
        values = torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)
        return values.to(device=device, dtype=dtype)

    def permutation(self, n: int, device: Device = None) -> torch.Tensor:
        """A random permutation of 0 .. n-1 (int64)."""
        return torch.randperm(n, generator=self.generator).to(device)

    def integers(self, low: int, high: int, shape: Sequence[int], device: Device = None) -> torch.Tensor:
        """Uniform integers in [low, high) of `shape` (int64)."""
        return torch.randint(low, high, tuple(shape), generator=self.generator).to(device)

"""What every learned reward shares: batching, no_grad, device and dtype, and loading messages."""

from __future__ import annotations

import os

import torch
from torch import nn

from rlft.errors import ConfigError
from rlft.rewards.base import Reward

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """ "auto": this process's GPU when there is one (each DDP rank scores on its own), else the CPU."""
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{{key}}={device} is not a device; use auto, cpu, cuda or cuda:<index>", "device") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{{key}}={device}: no CUDA GPU is visible to this process; use auto or cpu", "device")
    return chosen


def missing_weights(
    what: str, source: str, files: str, fix: str, argument: str | None = None, value: str | None = None
) -> ConfigError:
    """The error for weights that are not here. With `argument` (the loader's argument that points
    at them, e.g. "checkpoint") the message starts with `<key>=<value>:` and may say `{key}` in `fix`
    (rlft.errors.ConfigError names the full key)."""
    offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    prefix = "" if argument is None else f"{{key}}={value or 'null'}: "
    return ConfigError(f"{prefix}cannot load {what} from '{source}'{offline}: it needs {files}. Fix: {fix}", argument)


class LearnedReward(Reward):
    """A reward computed by networks: frozen, in eval mode, in `dtype` on `device`, scored in
    chunks of `batch_size` images under no_grad; one float per image, returned on the CPU."""

    def __init__(self, device: str = "auto", dtype: str = "float32", batch_size: int = 32):
        if dtype not in DTYPES:
            raise ConfigError(f"{{key}}={dtype!r} is not one of {sorted(DTYPES)}", "dtype")
        if batch_size < 1:
            raise ConfigError(f"{{key}}={batch_size} must be at least 1", "batch_size")
        self.device = resolve_device(device)
        self.follows_run_device = device == "auto"
        self.dtype = DTYPES[dtype]
        self.batch_size = batch_size
        self.modules: list[nn.Module] = []

    def place(self, module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
        self.modules.append(module)
        return module.to(device=self.device, dtype=dtype or self.dtype).eval().requires_grad_(False)

    def move_to(self, device: torch.device) -> None:
        """Follow the run's device: with device=auto the reward is built before Lightning has given
        each DDP rank its GPU, so the RL module moves it once training starts."""
        for module in self.modules:
            module.to(device)
        self.device = torch.device(device)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        scores = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size].to(self.device)
            scores.append(self.score_batch(chunk, list(prompts[start : start + self.batch_size])).float().cpu())
        return torch.cat(scores)

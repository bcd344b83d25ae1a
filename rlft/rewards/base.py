"""The reward interface, and the runner that scores batches while sampling goes on."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8, rounded (as the reference rewards do)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Reward:
    """Scores images. Subclasses implement `score_uint8` or `score`.

    `background = True` declares that scoring runs no torch ops (pure numpy/PIL/HTTP), so it can run
    in a worker thread without starting a second OpenMP pool that slows the sampler
    (docs/environment.md#openmp-thread-pools).
    """

    name: str = "reward"
    background: bool = False

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        return torch.as_tensor(self.score_uint8(to_uint8(images), prompts, metadata), dtype=torch.float32)

    def score_uint8(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        return self.score(images, prompts, metadata)


class RewardRunner:
    """Scores each sampled batch with every reward; background-safe rewards overlap with sampling."""

    def __init__(self, rewards: dict[str, Reward], workers: int = 2):
        self.rewards = rewards
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward")
        self._pending: list[dict[str, Future]] = []
        self.seconds = 0.0  # time spent scoring, summed over rewards and batches
        self._lock = threading.Lock()

    def submit(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> None:
        futures = {}
        pixels = None
        for name, reward in self.rewards.items():
            if reward.background:
                pixels = to_uint8(images) if pixels is None else pixels  # torch work stays on this thread
                futures[name] = self._pool.submit(self._timed, reward.score_uint8, pixels, prompts, metadata)
            else:
                done: Future = Future()
                done.set_result(self._timed(reward.score, images, prompts, metadata))
                futures[name] = done
        self._pending.append(futures)

    def _timed(self, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        with self._lock:
            self.seconds += time.perf_counter() - start
        return result

    def collect(self) -> dict[str, torch.Tensor]:
        """Wait for every submitted batch; returns each reward's scores concatenated in order."""
        pending, self._pending = self._pending, []
        # Converted to tensors here, on the calling thread: workers run no torch code.
        return {
            name: torch.cat(
                [torch.as_tensor(np.asarray(b[name].result()), dtype=torch.float32).reshape(-1) for b in pending]
            )
            for name in self.rewards
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # Picklable (a thread pool is not): torch-xla's multi-device launcher sends the module, rewards
    # included, to the processes it starts; each gets a fresh pool.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("_pool", "_lock", "_pending"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__init__(state.pop("rewards"), workers=state.pop("workers"))
        self.__dict__.update(state)

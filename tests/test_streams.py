"""Random streams (rlft/streams.py): every draw of a run happens on the host, through a RandomStream.

A stream created on the run's device broke every GPU run at its first optimizer step (a CUDA
generator reaching `torch.randperm` on the CPU). These tests catch that class of bug on a CPU: the
source holds no random call outside rlft/streams.py, and a real epoch of every algorithm family
draws only from CPU generators.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from rlft.streams import RandomStream, stream_seed
from rlft.train import train
from tests.conftest import FAST, compose_config

RLFT = Path(__file__).parent.parent / "rlft"
# torch functions and tensor methods that draw random numbers
RANDOM_CALLS = {
    "randn", "rand", "randint", "randperm", "normal", "bernoulli", "multinomial", "poisson",
    "randn_like", "rand_like", "randint_like", "normal_", "uniform_", "random_", "exponential_",
    "geometric_", "cauchy_", "log_normal_", "bernoulli_", "Generator",
}  # fmt: skip
# Outside a run's streams on purpose: pretraining draws from torch's global generators, seeded by
# seed_everything (no explicit generator, so right on any device; a pretraining run is not resumed);
# the benchmark's inputs are timing data; the critic's weights are initialized once, on the CPU, when
# the algorithm is built (seeded by seed_everything; a resumed run loads them from its checkpoint).
NOT_A_RUN = {"pretrain.py", "bench.py", "critic.py"}


def random_calls(path: Path) -> list[str]:
    """`torch.<random function>(...)`, `nn.init.<...>(...)` and in-place random tensor methods."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, receiver = node.func.attr, ast.unparse(node.func.value)
        if name in RANDOM_CALLS and (receiver in ("torch", "torch.random", "nn.init", "torch.nn.init") or name.endswith("_")):
            calls.append(f"{path.relative_to(RLFT.parent)}:{node.lineno} {receiver}.{name}")
    return calls


def test_no_random_call_outside_the_streams_module():
    found = [
        call
        for path in sorted(RLFT.rglob("*.py"))
        if path.name not in {"streams.py", *NOT_A_RUN}
        for call in random_calls(path)
    ]
    assert not found, f"draw through rlft.streams.RandomStream instead: {found}"
    assert random_calls(RLFT / "streams.py")  # the scan does see calls where there are some


def test_a_stream_draws_what_a_seeded_cpu_generator_draws_and_moves_it_to_the_device():
    stream, generator = RandomStream(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(stream.normal((3, 4)), torch.randn(3, 4, generator=generator), rtol=0, atol=0)
    assert torch.equal(stream.permutation(10), torch.randperm(10, generator=generator))
    assert torch.equal(stream.integers(5, 9, (6,)), torch.randint(5, 9, (6,), generator=generator))
    # the values go to the device asked for, whatever it is ("meta" stands in for an accelerator)
    assert stream.normal((2,), device="meta").device.type == "meta"
    assert stream.permutation(4, device="meta").device.type == "meta"
    assert stream.normal((2,), dtype=torch.bfloat16).dtype == torch.bfloat16
    assert stream.generator.device.type == "cpu"


def test_stream_seeds_differ_by_every_part_of_their_key():
    seeds = {stream_seed(42, rank, epoch, stream) for rank in range(2) for epoch in range(3) for stream in range(3)}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)


class RecordDraws(TorchFunctionMode):
    """Every random torch call made while active: its name, the generator it drew from and the file
    of the Python code that called it."""

    NAMES = RANDOM_CALLS - {"Generator"}

    def __init__(self):
        super().__init__()
        self.draws: list[tuple[str, torch.Generator | None, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            caller = sys._getframe(1).f_code.co_filename
            self.draws.append((name, kwargs.get("generator"), caller))
        return func(*args, **kwargs)


@pytest.mark.parametrize("algorithm", ["ddpo", "tdpo_r", "rwr_sparse", "grpo"])
def test_an_epoch_of_every_algorithm_draws_only_from_host_streams(tmp_path, algorithm):
    """Sampler noise, shuffles, time permutations, RWR's timesteps and noise, TDPO-R's resets and the
    showcase: all from CPU generators, none from torch's global (unsaved, per-device) ones."""
    overrides = [*FAST, f"algorithm={algorithm}", "showcase.samples=2", "showcase.batch_size=2"]
    if algorithm == "tdpo_r":
        overrides.append("algorithm.neuron_reset_freq=1")  # the reset draws too
    if algorithm == "grpo":  # one x_T per group, and the KL's reference evaluation
        overrides += ["sample.images_per_prompt=2", "sample.same_noise_per_group=true", "algorithm.kl_beta=0.1"]
    cfg = compose_config(overrides)
    with RecordDraws() as recorder:
        train(cfg, tmp_path / "run")
    ours = [(name, generator, caller) for name, generator, caller in recorder.draws if caller.startswith(str(RLFT))]
    drawn = {name for name, _, _ in ours}
    assert {"randn", "randperm"} <= drawn
    if algorithm == "rwr_sparse":
        assert "randint" in drawn
    # (draws by libraries, such as the weight initialization of the models built, are not a run's)
    unsafe = [
        (name, caller)
        for name, generator, caller in ours
        if not caller.endswith("streams.py") or generator is None or generator.device.type != "cpu"
    ]
    assert not unsafe, unsafe

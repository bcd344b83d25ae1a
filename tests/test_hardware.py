"""The hardware group: strategies and accelerators that need hardware this machine lacks still
compose and build, and fail with one clear message here."""

import pytest
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy

from rlft.train import build_strategy
from tests.conftest import FAST, compose_config, run_cli


def test_fsdp_strategy_shards_the_unet_blocks():
    cfg = compose_config(["hardware=fsdp"])
    strategy = build_strategy(cfg.hardware)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    assert strategy.kwargs["use_orig_params"] is True  # frozen and trainable weights in one unit
    assert (cfg.hardware.accelerator, cfg.hardware.precision) == ("gpu", "bf16-mixed")
    # the wrap policy names blocks that the models really contain
    unet = instantiate(compose_config([]).model.components).unet
    wrapped = instantiate(cfg.hardware.strategy.auto_wrap_policy)
    found = {type(m) for m in unet.modules() if type(m) in wrapped}
    assert found == wrapped


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hardware=fsdp", "hardware.accelerator=cpu"], "hardware=fsdp shards the model over CUDA GPUs"),
        (["hardware=tpu"], "hardware.accelerator=tpu needs torch-xla"),
    ],
    ids=["fsdp_on_cpu", "tpu_without_torch_xla"],
)
def test_hardware_this_machine_lacks_is_one_clear_error(tmp_path, overrides, message):
    try:
        import torch_xla  # noqa: F401

        if "hardware=tpu" in overrides:
            pytest.skip("torch-xla is installed here: hardware=tpu runs (tests/xla)")
    except ImportError:
        pass
    result = run_cli([*overrides, *FAST, f"output_root={tmp_path}"], cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr

"""Gradient clipping under mixed precision: the norm clipped is the true gradient's, not the
loss-scaled one's (16-mixed multiplies the loss, and so the gradients, by GradScaler's scale)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from torch.optim.optimizer import register_optimizer_step_post_hook

from rlft.train import build_module, build_trainer
from tests.conftest import FAST, compose_config

MAX_GRAD_NORM = 1e-4  # far below any gradient here: every step is clipped to exactly this norm


def policy_gradient_norms(tmp_path, plugins: list) -> list[float]:
    """Fit one epoch on the tiny model; the policy's gradient norm as each optimizer step sees it."""
    cfg = compose_config([*FAST, f"train.max_grad_norm={MAX_GRAD_NORM}"])
    module = build_module(cfg, tmp_path / "run")
    trainable = {id(p) for p in module.policy.trainable_parameters()}
    norms: list[float] = []

    def record(optimizer, args, kwargs):  # runs after optimizer.step(): the gradients it stepped on
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if id(p) in trainable]
        if grads:
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    handle = register_optimizer_step_post_hook(record)
    try:
        settings = {"plugins": plugins, "precision": None} if plugins else {}
        trainer = build_trainer(cfg, logger=False, enable_checkpointing=False, **settings)
        trainer.fit(module)
    finally:
        handle.remove()
    return norms


@pytest.mark.parametrize("precision", ["16-mixed", "32-true"])
def test_gradients_are_clipped_to_the_true_norm(tmp_path, precision):
    plugins = []
    if precision == "16-mixed":
        # Lightning turns 16-mixed into bf16 on a CPU; a real fp16 GradScaler is asked for explicitly
        # (scale 2^14: clipping the scaled gradients would leave a norm of 1e-4 / 16384).
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**14))]
    norms = policy_gradient_norms(tmp_path, plugins)
    assert norms, "no optimizer step ran"
    for norm in norms:
        assert norm == pytest.approx(MAX_GRAD_NORM, rel=1e-3)


def test_bf16_stays_the_gpu_default():
    assert compose_config(["hardware=gpu"]).hardware.precision == "bf16-mixed"

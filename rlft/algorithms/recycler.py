"""Dormant-neuron scores and neuron resets for TDPO-R's critic (docs/algorithms.md#neuron-reset-tdpo-r).

Written by hand: no maintained library implements ReDo-style scoring and resets for torch
models together with the matching AdamW moment resets.
"""

from __future__ import annotations

import torch
from torch import nn

from rlft.algorithms.critic import Critic
from rlft.streams import RandomStream


@torch.no_grad()
def hidden_activations(critic: Critic, features: torch.Tensor) -> list[torch.Tensor]:
    """ReLU of each hidden layer's output (eval mode): the critic has no non-linearity, so the ReLU
    is applied only to score the neurons."""
    was_training = critic.training
    critic.eval()
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out.relu())) for layer in critic.hidden]
    try:
        critic(features)
    finally:
        for hook in hooks:
            hook.remove()
        critic.train(was_training)
    return outputs


def neuron_scores(activations: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer: s = mean |activation| over the samples, normalized by the layer's mean score."""
    scores = []
    for layer_activations in activations:
        s = layer_activations.abs().mean(dim=0)
        scores.append(s / (s.mean() + 1e-9))
    return scores


@torch.no_grad()
def reset_neurons(
    critic: Critic, masks: list[torch.Tensor], optimizer: torch.optim.Optimizer | None, stream: RandomStream
) -> None:
    """Re-initialise the masked neurons of each hidden layer: their incoming weight rows
    ~ N(0, init_std), incoming biases 0, outgoing weight columns ~ N(0, init_std); and zero the
    optimizer's moments of exactly those entries. Everything else is untouched.

    Written with masks over whole weight matrices rather than the masked rows' indices: the shapes
    stay the same whatever the number of neurons reset (on XLA, one compiled graph for every reset).
    """
    layers = critic.linear_layers()
    for index, mask in enumerate(masks):
        incoming, outgoing = layers[index], layers[index + 1]
        rows = mask.to(incoming.weight.device)[:, None]  # (out_features of incoming, 1)
        columns = rows.T  # (1, in_features of outgoing)
        fresh_in = _normal(incoming.weight.shape, critic.init_std, stream, incoming.weight)
        fresh_out = _normal(outgoing.weight.shape, critic.init_std, stream, outgoing.weight)
        incoming.weight.copy_(torch.where(rows, fresh_in, incoming.weight))
        incoming.bias.masked_fill_(rows[:, 0], 0.0)
        outgoing.weight.copy_(torch.where(columns, fresh_out, outgoing.weight))
        if optimizer is not None:
            _zero_moments(optimizer, incoming.weight, lambda m, r=rows: m.masked_fill_(r, 0.0))
            _zero_moments(optimizer, incoming.bias, lambda m, r=rows[:, 0]: m.masked_fill_(r, 0.0))
            _zero_moments(optimizer, outgoing.weight, lambda m, c=columns: m.masked_fill_(c, 0.0))


def _normal(shape, std: float, stream: RandomStream, like: torch.Tensor) -> torch.Tensor:
    values = stream.normal(shape) * std
    return values.to(device=like.device, dtype=like.dtype)


def _zero_moments(optimizer: torch.optim.Optimizer, param: nn.Parameter, zero) -> None:
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            zero(state[key])

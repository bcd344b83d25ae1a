"""TDPO's temporal critic (docs/algorithms.md#the-critic): a linear MLP on image embeddings of the states."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class Critic(nn.Module):
    """Linear layers shaped like the LAION aesthetic head (D -> 1024 -> 128 -> 64 -> 16 -> 1) with
    dropout between them and no non-linearities; weights ~ N(0, 1/(D+1)), biases 0."""

    def __init__(
        self,
        input_dim: int,
        hidden_sizes: tuple[int, ...] = (1024, 128, 64, 16),
        dropout: tuple[float, ...] = (0.2, 0.2, 0.1, 0.0),
    ):
        super().__init__()
        if len(dropout) != len(hidden_sizes):
            raise ValueError("one dropout rate per hidden layer")
        self.input_dim = input_dim
        self.init_std = 1.0 / (input_dim + 1)
        sizes = [input_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.dropout = nn.ModuleList(nn.Dropout(p) for p in dropout)
        self.head = nn.Linear(sizes[-1], 1)
        for layer in self.linear_layers():
            nn.init.normal_(layer.weight, std=self.init_std)
            nn.init.zeros_(layer.bias)

    def linear_layers(self) -> list[nn.Linear]:
        return [*self.hidden, self.head]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float()
        for layer, dropout in zip(self.hidden, self.dropout, strict=True):
            x = dropout(layer(x))
        return self.head(x).squeeze(-1)

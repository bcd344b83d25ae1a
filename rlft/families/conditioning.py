"""Text conditioning as one batch-indexable value, whatever a family's text encoders produce.

SD 1.x conditions on CLIP's hidden states alone (`pooled` None); SD3 adds the pooled CLIP
projections. Samplers and trainers index, select and concatenate it without knowing which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextConditioning:
    """hidden_states: (B, L, D), the sequence the denoiser attends to; pooled: (B, P) or None."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def __getitem__(self, index: int | slice | torch.Tensor) -> TextConditioning:
        if isinstance(index, int):  # keep the batch dimension
            index = slice(index, index + 1 if index != -1 else None)
        return TextConditioning(self.hidden_states[index], None if self.pooled is None else self.pooled[index])

    def index_select(self, index: torch.Tensor) -> TextConditioning:
        hidden = self.hidden_states.index_select(0, index.to(self.hidden_states.device))
        pooled = None if self.pooled is None else self.pooled.index_select(0, index.to(self.pooled.device))
        return TextConditioning(hidden, pooled)

    def expand(self, batch: int) -> TextConditioning:
        """A single conditioning (batch 1) repeated `batch` times, as views."""
        hidden = self.hidden_states.expand(batch, *self.hidden_states.shape[1:])
        return TextConditioning(hidden, None if self.pooled is None else self.pooled.expand(batch, -1))

    def to(self, *args, **kwargs) -> TextConditioning:
        """Tensor.to on every part (device and/or dtype)."""
        return TextConditioning(
            self.hidden_states.to(*args, **kwargs), None if self.pooled is None else self.pooled.to(*args, **kwargs)
        )

    @staticmethod
    def cat(parts: list[TextConditioning]) -> TextConditioning:
        """Concatenate along the batch (for guidance: [unconditional; conditional] in one call)."""
        pooled = [p.pooled for p in parts]
        if any(p is None for p in pooled) and not all(p is None for p in pooled):
            raise ValueError("cannot concatenate conditionings with and without pooled embeddings")
        hidden = torch.cat([p.hidden_states for p in parts])
        return TextConditioning(hidden, None if pooled[0] is None else torch.cat(pooled))

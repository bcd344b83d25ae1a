"""The modules that FSDP shards as units and may checkpoint (hardware=fsdp)."""

from __future__ import annotations

from torch import nn


def diffusion_blocks() -> set[type[nn.Module]]:
    """The UNet's repeated blocks: each is gathered for its own forward and backward and freed
    after, so a GPU holds one block's full weights at a time besides its shard of everything."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    return {BasicTransformerBlock, ResnetBlock2D}

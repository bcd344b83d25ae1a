"""Frozen image encoders: images to L2-normalized embeddings (TDPO's critic input,
docs/algorithms.md#critic-inputs).

`tiny_clip` builds a small CLIP vision tower offline with random weights (for the tiny models);
`pretrained_clip` loads the vision tower and projection of any CLIP checkpoint (OpenAI ViT-L/14,
PickScore, ...) from a hub id or a local directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from rlft.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] to CLIP's input: uint8 rounding, shortest side to `size`
    (bicubic, antialiased), centre crop, CLIP mean/std.

    Written with torch ops rather than CLIPImageProcessor so that it runs batched on the run's
    device (the processor works one PIL image at a time); torch's antialiased bicubic differs from
    PIL's by a few 1e-3.
    """
    pixels = (images.float().clamp(0, 1) * 255).round() / 255  # what a uint8 image would hold
    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    resized = (max(size, round(height * scale)), max(size, round(width * scale)))
    if resized != (height, width):
        pixels = F.interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    pixels = pixels[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


class ImageEmbedder(nn.Module):
    """L2-normalized CLIP image features of images in [0, 1], preprocessed by `clip_preprocess`."""

    def __init__(self, model: CLIPVisionModelWithProjection):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = model.config.image_size

    @classmethod
    def from_clip_model(cls, model: CLIPModel) -> ImageEmbedder:
        """The image tower and projection of a two-tower CLIPModel."""
        config = CLIPVisionConfig(**model.config.vision_config.to_dict())
        config.projection_dim = model.config.projection_dim
        tower = CLIPVisionModelWithProjection(config)
        state = {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
        tower.load_state_dict(state)
        return cls(tower.to(model.dtype))

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        pixels = clip_preprocess(images.to(next(self.model.parameters()).device), self.size)
        features = self.model(pixel_values=pixels.to(dtype)).image_embeds.float()
        return F.normalize(features, dim=-1)


def tiny_clip(
    seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2, projection_dim: int = 32
) -> ImageEmbedder:
    """A CLIP vision tower with random weights, identical for a given seed and shape."""
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                image_size=image_size,
                patch_size=patch_size,
                hidden_size=width,
                intermediate_size=4 * width,
                num_hidden_layers=layers,
                num_attention_heads=max(1, width // 16),
                projection_dim=projection_dim,
            )
        )
    return ImageEmbedder(model)


def pretrained_clip(hub_id: str, path: str | None = None) -> ImageEmbedder:
    """The image tower of a CLIP checkpoint (e.g. openai/clip-vit-large-patch14, yuvalkirstain/PickScore_v1).

    Its errors name the key `path` sits under (reward.embedder.path, model.image_embedder.path)
    when it is built by rlft.config.build."""
    source = str(Path(path).expanduser()) if path else hub_id
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(source)
    except (OSError, ValueError) as error:
        if path:
            reason = f"{type(error).__name__}: no CLIP checkpoint (config.json and weights) there"
        else:
            offline = " and HF_HUB_OFFLINE=1" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
            reason = f"{type(error).__name__}: not in the local Hugging Face cache{offline}"
        raise ConfigError(
            f"{{key}}={path or 'null'}: cannot load the image encoder '{source}' ({reason}). Fix: run "
            f"`hf download {hub_id}` on a machine with internet access, or pass {{key}}=/a/local/copy.",
            argument="path",
        ) from error
    return ImageEmbedder(model)

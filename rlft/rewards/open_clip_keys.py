"""open_clip state dicts (the layout of the HPSv2 checkpoints) to transformers' CLIPModel.

Written by hand: the checkpoints ship in open_clip's layout, and open_clip cannot be installed here
(it needs torchvision, docs/environment.md#no-torchvision). The mapping is mechanical:
fused attention projections are split
into q/k/v, and the two projection matrices are transposed (open_clip multiplies x @ P, a Linear
computes x @ W.T).
"""

from __future__ import annotations

import re

import torch

_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_IGNORED = {"attn_mask", "visual.attn_mask"}  # buffers open_clip rebuilds; CLIPModel makes its own masks


def open_clip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert every key; an unknown key raises (rather than silently dropping weights)."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in _IGNORED:
            continue
        if key in _TOP:
            converted[_TOP[key]] = value
        elif key in _TRANSPOSED:
            converted[_TRANSPOSED[key]] = value.t().contiguous()
        elif match := _RESBLOCK.match(key):
            tower = "vision_model" if match.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{match.group(2)}."
            rest = match.group(3)
            if rest.startswith("attn.in_proj_"):
                kind = rest.removeprefix("attn.in_proj_")  # weight or bias, q/k/v stacked on dim 0
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    converted[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            module, _, leaf = rest.rpartition(".")
            if module not in _BLOCK:
                raise KeyError(f"unexpected open_clip key {key!r}")
            converted[f"{prefix}{_BLOCK[module]}.{leaf}"] = value
        else:
            raise KeyError(f"unexpected open_clip key {key!r}")
    return converted

"""model=toy_flow: a flow-matching (SD3-family) text-to-image model of the compositional world
(rlft/toy/compositional.py), which `python -m rlft.pretrain --config-name pretrain_flow` trains.

32x32 images, a VAE with one downsampling (16x16x4 latents: an 8-pixel object keeps 4x4 latent
cells), an MMDiT transformer over 2x2 patches (64 image tokens), two small CLIP text encoders over a
word-level vocabulary (one token per caption word) and no T5, the flow-match Euler scheduler.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from rlft.errors import ConfigError
from rlft.families.sd3 import SD3Components, load_sd3
from rlft.models import word_tokenizer
from rlft.toy.compositional import NUMBERS, RELATIONS
from rlft.toy.world import COLORS, SHAPES

SHIPPED = Path(__file__).parent / "flow_pipeline"


def compositional_vocabulary() -> list[str]:
    """Every word the compositional world's captions use (one token each for the text encoders)."""
    words = {"a", "and", *COLORS, *SHAPES, *(f"{shape}s" for shape in SHAPES), *NUMBERS.values()}
    words.update(word for relation in RELATIONS for word in relation.split())
    return sorted(words)


def _clip(tokenizer, width: int, layers: int) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,  # SD3 reads the penultimate layer's states
            num_attention_heads=4,
            projection_dim=width,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_toy_flow(
    seed: int = 0,
    resolution: int = 32,
    vae_channels: tuple[int, ...] = (32, 64),
    vae_norm_groups: int = 8,
    layers: int = 4,
    heads: int = 4,
    head_dim: int = 32,
    patch_size: int = 2,
    text_width: int = 64,
    text_layers: int = 2,
    max_length: int = 12,
    shift: float = 1.0,
) -> SD3Components:
    """The untrained toy flow model, identical for a given seed and shape. `max_length`: the padded
    caption length in tokens (the longest caption is 7 words + 2 special tokens)."""
    vocabulary = compositional_vocabulary()
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        tokenizer, tokenizer_2 = (word_tokenizer(vocabulary, max_length) for _ in range(2))
        text_encoder, text_encoder_2 = (_clip(t, text_width, text_layers) for t in (tokenizer, tokenizer_2))
        latent_side = resolution // 2 ** (len(vae_channels) - 1)
        transformer = SD3Transformer2DModel(
            sample_size=latent_side,
            patch_size=patch_size,
            in_channels=4,
            num_layers=layers,
            attention_head_dim=head_dim,
            num_attention_heads=heads,
            caption_projection_dim=heads * head_dim,
            joint_attention_dim=text_width,
            pooled_projection_dim=2 * text_width,  # the two CLIP projections, concatenated
            out_channels=4,
            pos_embed_max_size=latent_side // patch_size,
        )
        vae = AutoencoderKL(
            sample_size=resolution,
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            block_out_channels=tuple(vae_channels),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=vae_norm_groups,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0,  # set from the trained encoder's latents (rlft.pretrain)
            scaling_factor=1.0,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    return SD3Components(transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, None, None, scheduler)


def load_toy_flow(path: str | None = None) -> SD3Components:
    """The pipeline at `path` (a `python -m rlft.pretrain --config-name pretrain_flow` output), or the
    one shipped with rlft, in float32."""
    directory = Path(path).expanduser() if path else SHIPPED
    if not (directory / "model_index.json").is_file():
        raise ConfigError(
            f"model=toy_flow: no pretrained toy flow pipeline at {directory}; train one with "
            "`python -m rlft.pretrain --config-name pretrain_flow` and pass model.path=<its run directory>/pipeline"
        )
    components = load_sd3(hub_id=str(directory), path=str(directory), t5=False)
    for module in (components.transformer, components.vae, components.text_encoder, components.text_encoder_2):
        module.float()  # shipped in float16 to keep it small
    return components

"""Two-tower CLIP models for prompt-image rewards (PickScore, HPSv2): built offline with random
weights for tests, or loaded from the hub or a local directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from rlft.embedders import clip_preprocess
from rlft.models import character_tokenizer
from rlft.rewards.learned import missing_weights


@dataclass
class ClipTowers:
    model: CLIPModel
    tokenizer: CLIPTokenizer

    def features(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalized image and text embeddings (B, D) of images in [0, 1] and their prompts."""
        dtype = self.model.logit_scale.dtype
        pixels = clip_preprocess(images, self.model.config.vision_config.image_size).to(dtype)
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(images.device)
        image = self.model.get_image_features(pixel_values=pixels)
        text = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        image, text = _tensor(image), _tensor(text)
        return F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)

    @property
    def max_length(self) -> int:
        return min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)


def _tensor(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooled projection is the features
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def tiny_clip_config(
    image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2, projection_dim: int = 32
) -> CLIPConfig:
    tokenizer = character_tokenizer()
    return CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // 16),
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_act": "gelu",
        },
        vision_config={
            "image_size": image_size,
            "patch_size": patch_size,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // 16),
            "hidden_act": "gelu",
        },
        projection_dim=projection_dim,
    )


def tiny_clip_towers(seed: int = 0, **config) -> ClipTowers:
    """A CLIP model with random weights (identical for a seed) and the byte-level tokenizer."""
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config(**config))
    return ClipTowers(model, character_tokenizer())


def load_clip_tokenizer(source: str, what: str, argument: str = "tokenizer") -> CLIPTokenizer:
    """CLIPTokenizer.from_pretrained, refusing the near-empty tokenizer transformers builds (without
    an error) when vocab.json and merges.txt are not found. `argument`: the loader's argument that
    gave `source`, named in the error."""
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None or len(tokenizer) < 1000:
        raise missing_weights(
            what,
            source,
            "vocab.json and merges.txt",
            f"run `hf download {source}` on a machine with internet access, or pass {{key}}=/a/directory/with/them",
            argument=argument,
            value=source,
        )
    return tokenizer


def pretrained_clip_towers(hub_id: str, tokenizer: str | None = None, path: str | None = None) -> ClipTowers:
    """A CLIP checkpoint (e.g. yuvalkirstain/PickScore_v1) and its tokenizer (PickScore's repository
    has none: it uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K's)."""
    source = str(Path(path).expanduser()) if path else hub_id
    tokenizer_source = source if path else (tokenizer or hub_id)
    try:
        model = CLIPModel.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise missing_weights(
            "the CLIP model",
            source,
            "config.json, the model weights and the tokenizer files (vocab.json, merges.txt)",
            f"run `hf download {hub_id}` (and `{tokenizer}` for the tokenizer) on a machine with "
            "internet access, or pass {key}=/dir/with/both",
            argument="path",
            value=path,
        ) from error
    return ClipTowers(
        model, load_clip_tokenizer(tokenizer_source, "the CLIP tokenizer", "path" if path else "tokenizer")
    )

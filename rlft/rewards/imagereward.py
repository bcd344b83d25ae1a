"""ImageReward (docs/algorithms.md#imagereward): BLIP ViT-L image tokens, cross-attended by BLIP's BERT text
encoder on the prompt; the [CLS] state through a linear head; standardized as the official API.

Rebuilt on transformers' BLIP modules (the `image-reward` package cannot be installed here,
docs/environment.md#reward-packages-that-cannot-be-dependencies) and loaded from the official
ImageReward.pt, whose keys use BLIP's original names.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from rlft.embedders import clip_preprocess
from rlft.errors import ConfigError
from rlft.rewards.aesthetic import AestheticHead
from rlft.rewards.learned import LearnedReward, missing_weights

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the official standardization
HUB_REPO = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"


def blip_configs(architecture: str) -> tuple[BlipVisionConfig, BlipTextConfig]:
    """BLIP ViT-L/16 at 224 px and BERT-base with cross-attention (vocab 30524: BERT's plus [DEC],
    [ENC]); or a tiny pair for tests."""
    if architecture == "tiny":
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        vision.update(image_size=32, patch_size=8)
        text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        text.update(num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, sep_token_id=3)
    else:
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
        vision.update(image_size=224, patch_size=16)
        text = {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}
        text.update(num_attention_heads=12, max_position_embeddings=512)
    vision_config = BlipVisionConfig(**vision, layer_norm_eps=1e-6, hidden_act="gelu")
    text_config = BlipTextConfig(
        **text, encoder_hidden_size=vision["hidden_size"], is_decoder=True, layer_norm_eps=1e-12, hidden_act="gelu"
    )
    return vision_config, text_config


_VISION_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VISION_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv"}
_VISION_BLOCK |= {"attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
# Parts of the BLIP pretraining model that the score does not use (projections, ITM head, momentum
# encoders and queues); ImageReward itself loads the file non-strictly for the same reason.
_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj|itm_head|\w+_m\.|\w*queue|temp|text_decoder)")


def blip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """ImageReward.pt's keys to {"vision": ..., "text": ..., "head": ...} state dicts."""
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "text": {}, "head": {}}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            if name in _VISION_TOP:
                parts["vision"][_VISION_TOP[name]] = value
                continue
            match = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", name)
            if not match or match.group(2) not in _VISION_BLOCK:
                raise KeyError(f"unexpected BLIP vision key {key!r}")
            parts["vision"][f"encoder.layers.{match.group(1)}.{_VISION_BLOCK[match.group(2)]}.{match.group(3)}"] = value
        elif key.startswith("blip.text_encoder."):
            name = key.removeprefix("blip.text_encoder.")
            if not name.endswith("position_ids"):  # a buffer transformers rebuilds
                parts["text"][name] = value  # BLIP's med.py names are transformers' BLIP text names
        elif key.startswith("mlp."):
            parts["head"][key.removeprefix("mlp.")] = value
        elif not _UNUSED.match(key):
            raise KeyError(f"unexpected ImageReward key {key!r}")
    return parts


def tiny_bert_tokenizer() -> BertTokenizer:
    """A lower-case character-level WordPiece vocabulary of 64 entries, written offline."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + list("abcdefghijklmnopqrstuvwxyz0123456789") + [f"##{c}" for c in "abcdefghijklmnopqrstuvw"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(vocab[:64]) + "\n")
    try:
        return BertTokenizer(f.name, do_lower_case=True)
    finally:
        os.unlink(f.name)


class ImageReward(LearnedReward):
    """`standardize: true` (default) reports the official API's (raw - 0.1672) / 1.0333; false the raw
    head output the TDPO code used. `checkpoint`: a local ImageReward.pt, else fetched from the hub
    repository THUDM/ImageReward; `architecture: tiny` builds a tiny random model for tests."""

    name = "imagereward"

    def __init__(
        self,
        checkpoint: str | None = None,
        tokenizer: str = "bert-base-uncased",
        standardize: bool = True,
        architecture: str = "blip-large",
        seed: int = 0,
        max_length: int = 35,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
    ):
        super().__init__(device, dtype, batch_size)
        if architecture not in ("blip-large", "tiny"):
            raise ConfigError(f"{{key}}={architecture!r} must be blip-large or tiny", "architecture")
        path = self._checkpoint(checkpoint) if checkpoint or architecture != "tiny" else None
        self.tokenizer = tiny_bert_tokenizer() if architecture == "tiny" else self._tokenizer(tokenizer)
        vision_config, text_config = blip_configs(architecture)
        with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
            torch.manual_seed(seed)
            vision, text = BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False)
            head = AestheticHead(text_config.hidden_size)  # the same linear head shape, keys layers.0/2/4/6/7
        if path is not None:
            parts = blip_to_transformers(torch.load(path, map_location="cpu", weights_only=True))
            for module, part in ((vision, "vision"), (text, "text"), (head, "head")):
                module.load_state_dict(parts[part])
        self.vision, self.text, self.head = self.place(vision), self.place(text), self.place(head)
        self.standardize = standardize
        self.max_length = max_length

    @staticmethod
    def _tokenizer(source: str) -> BertTokenizer:
        try:
            tokenizer = BertTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            tokenizer = None
        if tokenizer is None or len(tokenizer) < 1000:
            raise missing_weights(
                "the BERT tokenizer",
                source,
                "vocab.txt",
                f"run `hf download {source}` or pass {{key}}=/a/directory/with/it",
                argument="tokenizer",
                value=source,
            )
        return tokenizer

    @staticmethod
    def _checkpoint(checkpoint: str | None) -> Path:
        fix = (
            f"run `hf download {HUB_REPO} {CHECKPOINT}` on a machine with internet access, "
            "or pass {key}=/path/to/ImageReward.pt"
        )
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise missing_weights("ImageReward", str(path), f"the file {CHECKPOINT}", fix, "checkpoint", checkpoint)
            return path
        from huggingface_hub import hf_hub_download

        try:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            return Path(hf_hub_download(HUB_REPO, CHECKPOINT, local_files_only=offline))
        except Exception as error:  # hub errors come in many types; all mean "not here"
            raise missing_weights(
                "ImageReward", f"{HUB_REPO}/{CHECKPOINT}", f"the file {CHECKPOINT}", fix, "checkpoint"
            ) from error

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = clip_preprocess(images, self.vision.config.image_size).to(self.dtype)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        text = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(images.device)
        hidden = self.text(
            input_ids=text.input_ids,
            attention_mask=text.attention_mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long, device=images.device),
        ).last_hidden_state
        raw = self.head(hidden[:, 0])
        return (raw - MEAN) / STD if self.standardize else raw

"""HPSv2 (docs/algorithms.md#hpsv2): an OpenCLIP ViT-H-14 fine-tuned on human preferences, rebuilt on
transformers' CLIPModel and loaded from the official open_clip-layout checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from rlft.embedders import ImageEmbedder
from rlft.errors import ConfigError
from rlft.rewards.clip_models import ClipTowers, load_clip_tokenizer, tiny_clip_config
from rlft.rewards.learned import LearnedReward, missing_weights
from rlft.rewards.open_clip_keys import open_clip_to_transformers

CHECKPOINTS = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}
HUB_REPO = "xswu/HPSv2"
TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # open_clip's ViT-H-14 uses the standard CLIP BPE


def vit_h_14_config() -> CLIPConfig:
    """open_clip's ViT-H-14: 32 x 1280 vision layers (patch 14, 224 px), 24 x 1024 text layers, 1024-d
    embeddings, exact GELU."""
    return CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 0,
        },
        vision_config={
            "image_size": 224,
            "patch_size": 14,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "hidden_act": "gelu",
        },
        projection_dim=1024,
    )


def load_open_clip_checkpoint(model: CLIPModel, path: Path) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    missing, unexpected = model.load_state_dict(open_clip_to_transformers(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit the HPSv2 model: missing {missing[:5]}, unexpected {unexpected[:5]}")


class HPSv2(LearnedReward):
    """score = cos(image, prompt) of the HPS-tuned CLIP (no logit scale), as the official hpsv2.score.

    `version` 2.0 or 2.1 picks the checkpoint; `checkpoint` a local file, else it is fetched from the
    hub repository xswu/HPSv2. `architecture: tiny` builds a tiny random model for tests
    (`checkpoint` may then name a tiny open_clip-layout file)."""

    name = "hpsv2"

    def __init__(
        self,
        version: str | float = "2.0",  # (reward.version=2.1 on the command line is a float)
        checkpoint: str | None = None,
        tokenizer: str = TOKENIZER,
        architecture: str = "ViT-H-14",
        seed: int = 0,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
    ):
        super().__init__(device, dtype, batch_size)
        version = str(version)
        if version not in CHECKPOINTS:
            raise ConfigError(f"{{key}}={version!r} is not one of {sorted(CHECKPOINTS)}", "version")
        if architecture not in ("ViT-H-14", "tiny"):
            raise ConfigError(f"{{key}}={architecture!r} must be ViT-H-14 or tiny", "architecture")
        # Files first, so that a missing one is reported before a 1B-parameter model is built.
        if architecture == "tiny":
            from rlft.models import character_tokenizer

            clip_tokenizer = character_tokenizer()
        else:
            clip_tokenizer = load_clip_tokenizer(tokenizer, "the HPSv2 tokenizer")
        path = self._checkpoint(version, checkpoint) if checkpoint or architecture != "tiny" else None
        with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
            torch.manual_seed(seed)
            model = CLIPModel(vit_h_14_config() if architecture == "ViT-H-14" else tiny_clip_config())
        if path is not None:
            load_open_clip_checkpoint(model, path)
        self.towers = ClipTowers(self.place(model), clip_tokenizer)

    @staticmethod
    def _checkpoint(version: str, checkpoint: str | None) -> Path:
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise missing_weights(
                    "HPSv2",
                    str(path),
                    f"the file {CHECKPOINTS[version]}",
                    f"download it from the hub repository {HUB_REPO} and pass {{key}}=/path/to/it",
                    argument="checkpoint",
                    value=checkpoint,
                )
            return path
        from huggingface_hub import hf_hub_download

        try:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            return Path(hf_hub_download(HUB_REPO, CHECKPOINTS[version], local_files_only=offline))
        except Exception as error:
            raise missing_weights(
                "HPSv2",
                f"{HUB_REPO}/{CHECKPOINTS[version]}",
                f"the file {CHECKPOINTS[version]}",
                f"run `hf download {HUB_REPO} {CHECKPOINTS[version]}` on a machine with internet "
                "access, or pass {key}=/path/to/it",
                argument="checkpoint",
            ) from error

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image, text = self.towers.features(images, prompts)
        return (image * text).sum(dim=-1)


def hpsv2_image_tower(version: str = "2.0", checkpoint: str | None = None) -> ImageEmbedder:
    """HPSv2's image tower as TDPO's critic encoder (normalized 1024-d embeddings,
    docs/algorithms.md#critic-inputs)."""
    reward = HPSv2(version=version, checkpoint=checkpoint, device="cpu")
    return ImageEmbedder.from_clip_model(reward.towers.model)

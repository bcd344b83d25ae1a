"""PickScore (docs/algorithms.md#pickscore): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences."""

from __future__ import annotations

import torch

from rlft.rewards.clip_models import ClipTowers
from rlft.rewards.learned import LearnedReward


class PickScore(LearnedReward):
    """score = logit_scale.exp() * cos(image, prompt), the paper's and the official code's score
    (about 20-23 for SD images). `logit_scale: false` gives the bare cosine the TDPO code used
    (about 0.2)."""

    name = "pickscore"

    def __init__(
        self,
        model: ClipTowers,
        logit_scale: bool = True,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
    ):
        super().__init__(device, dtype, batch_size)
        self.towers = ClipTowers(self.place(model.model), model.tokenizer)
        self.use_logit_scale = logit_scale

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image, text = self.towers.features(images, prompts)
        cosine = (image * text).sum(dim=-1)
        return cosine * self.towers.model.logit_scale.float().exp() if self.use_logit_scale else cosine

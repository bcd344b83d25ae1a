"""LAION aesthetic predictor v2 (docs/algorithms.md#laion-aesthetic-predictor): a linear head on
normalized CLIP ViT-L/14 image embeddings, about 1-10."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rlft.embedders import ImageEmbedder
from rlft.errors import ConfigError
from rlft.rewards.learned import LearnedReward, missing_weights

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class AestheticHead(nn.Sequential):
    """Linear D->1024->128->64->16->1 with dropouts and no activations; the indices of the linear
    layers (layers.0/2/4/6/7) match the released state dict."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


class AestheticScore(LearnedReward):
    """`head_path`: the released head (sac+logos+ava1-l14-linearMSE.pth). `random_head_seed`
    instead builds a random head (the offline tiny variant, for tests)."""

    name = "aesthetic"

    def __init__(
        self,
        embedder: ImageEmbedder,
        head_path: str | None = None,
        random_head_seed: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 32,
    ):
        super().__init__(device, dtype, batch_size)
        head = AestheticHead(embedder.dim)
        if head_path is not None:
            path = Path(head_path).expanduser()
            if not path.is_file():
                raise missing_weights(
                    "the aesthetic head",
                    str(path),
                    f"the file {HEAD_FILE} (3,714,759 bytes)",
                    "download it from github.com/christophschuhmann/improved-aesthetic-predictor and pass "
                    "{key}=/path/to/it",
                    argument="head_path",
                    value=head_path,
                )
            head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        elif random_head_seed is not None:
            with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
                torch.manual_seed(random_head_seed)
                head = AestheticHead(embedder.dim)
        else:
            raise ConfigError(
                f"{{key}}=null: the aesthetic reward needs its head {HEAD_FILE} from "
                "github.com/christophschuhmann/improved-aesthetic-predictor; pass {key}=/path/to/it",
                argument="head_path",
            )
        self.embedder = self.place(embedder)
        self.head = self.place(head)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.head(self.embedder(images).to(self.dtype))

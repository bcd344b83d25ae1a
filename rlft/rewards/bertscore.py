"""BERTScore recall (Zhang et al. 2020), as bert-score 0.3.13 computes it for DDPO's alignment reward:
no idf, no baseline rescaling, one hidden layer of a transformers encoder.

Written by hand (a few lines on transformers) rather than depending on the bert-score package,
which pins its own model-loading code; the formula is the package's default path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from rlft.rewards.learned import missing_weights


def greedy_recall(reference: torch.Tensor, reference_weights: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """sum_i w_i max_j cos(r_i, c_j) / sum_i w_i for one pair: reference (R, D), weights (R,),
    candidate (C, D). bert-score gives [CLS] and [SEP] of the reference weight 0, others 1."""
    similarity = F.normalize(reference, dim=-1) @ F.normalize(candidate, dim=-1).T
    best = similarity.max(dim=1).values
    return (best * reference_weights).sum() / reference_weights.sum()


class BertScore:
    """Recall of candidate sentences against references with `layer`'s hidden states of `model`
    (DDPO: microsoft/deberta-xlarge-mnli, layer 40, bert-score's default for it)."""

    def __init__(self, model, tokenizer, layer: int):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.layer = layer

    @classmethod
    def pretrained(cls, hub_id: str = "microsoft/deberta-xlarge-mnli", layer: int = 40, path: str | None = None):
        source = path or hub_id
        try:
            return cls(AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source), layer)
        except (OSError, ValueError) as error:
            raise missing_weights(
                "the BERTScore model",
                source,
                "its config, weights and tokenizer",
                f"run `hf download {hub_id}` or pass {{key}}=/a/local/copy",
                argument="path",
                value=path,
            ) from error

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(sentences, padding=True, truncation=True, return_tensors="pt").to(device)
        hidden = self.model(**tokens, output_hidden_states=True).hidden_states[self.layer].float()
        special = torch.zeros_like(tokens.input_ids, dtype=torch.bool)
        for token_id in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id):
            special |= tokens.input_ids == token_id
        return hidden, tokens.attention_mask.bool(), special

    def recall(self, candidates: list[str], references: list[str]) -> torch.Tensor:
        cand, cand_mask, _ = self.embed(candidates)
        ref, ref_mask, ref_special = self.embed(references)
        scores = []
        for i in range(len(references)):
            weights = (ref_mask[i] & ~ref_special[i]).float()[ref_mask[i]]
            scores.append(greedy_recall(ref[i][ref_mask[i]], weights, cand[i][cand_mask[i]]))
        return torch.stack(scores)

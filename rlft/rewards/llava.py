"""LLaVA-based rewards (docs/algorithms.md#llava-and-bertscore): captions scored with BERTScore recall against
"The image contains <prompt>" (DDPO's prompt-image alignment), and VQA substring accuracy.

They are heavy (a 7-13B LLaVA and a 0.75B DeBERTa): run them on their own GPU with
`python -m rlft.serve reward=llava_bertscore` and train with `reward=remote`.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from rlft.embedders import clip_preprocess
from rlft.errors import ConfigError
from rlft.models import character_tokenizer
from rlft.rewards.bertscore import BertScore
from rlft.rewards.imagereward import tiny_bert_tokenizer
from rlft.rewards.learned import LearnedReward, missing_weights


class LlavaCaptioner:
    """Greedy answers of a LLaVA model to a question about each image. The prompt follows LLaVA-1.5's
    template ("USER: <image>\\n<question> ASSISTANT:"); the image placeholder is expanded to one
    token per image feature here, so any tokenizer works (the tiny one included)."""

    def __init__(self, model: LlavaForConditionalGeneration, tokenizer, max_new_tokens: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        vision = model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        self.image_tokens = patches + (model.config.vision_feature_select_strategy == "full")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @torch.no_grad()
    def answer(self, images: torch.Tensor, question: str) -> list[str]:
        device = images.device
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        prompt = [
            *bos,
            *self._ids("USER: "),
            *[self.model.config.image_token_index] * self.image_tokens,
            *self._ids(f"\n{question} ASSISTANT:"),
        ]
        input_ids = torch.tensor([prompt] * len(images), device=device)
        pixels = clip_preprocess(images, self.model.config.vision_config.image_size).to(self.model.dtype)
        eos = self.tokenizer.eos_token_id
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=pixels,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
        )[:, input_ids.shape[1] :]
        vocabulary = len(self.tokenizer)
        answers = [
            self.tokenizer.decode([t for t in row.tolist() if t < vocabulary], skip_special_tokens=True)
            for row in output
        ]
        # LLaVA v0 ends its turn with "###"; strip that and a leading "Assistant:" as the reference server did
        return [a.split("###")[0].split("##")[0].removeprefix("Assistant:").strip() for a in answers]


def pretrained_llava(hub_id: str = "llava-hf/llava-1.5-7b-hf", path: str | None = None, max_new_tokens: int = 64):
    source = path or hub_id
    try:
        model = LlavaForConditionalGeneration.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise missing_weights(
            "LLaVA",
            source,
            "a transformers LLaVA checkpoint (config.json, weights, tokenizer)",
            f"run `hf download {hub_id}` or pass {{key}}=/a/local/copy",
            argument="path",
            value=path,
        ) from error
    return LlavaCaptioner(model, tokenizer, max_new_tokens)


def tiny_llava(seed: int = 0, max_new_tokens: int = 8) -> LlavaCaptioner:
    """A LLaVA with random weights (tiny CLIP tower and Llama) and the byte-level tokenizer."""
    tokenizer = character_tokenizer()
    image_token = len(tokenizer)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ).to_dict(),
        text_config=LlamaConfig(
            vocab_size=image_token + 1,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ).to_dict(),
        image_token_index=image_token,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    return LlavaCaptioner(model, tokenizer, max_new_tokens)


def pretrained_bertscore(hub_id: str = "microsoft/deberta-xlarge-mnli", layer: int = 40, path: str | None = None):
    return BertScore.pretrained(hub_id, layer, path)


def tiny_bertscore(seed: int = 0, layer: int = 2) -> BertScore:
    tokenizer = tiny_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return BertScore(model, tokenizer, layer)


class LlavaBertScore(LearnedReward):
    """Recall of "The image contains <prompt>" against LLaVA's answer to `question` (DDPO's
    prompt-image alignment; unrescaled BERTScore sits near 0.8 even for poor captions)."""

    name = "llava_bertscore"

    def __init__(
        self,
        llava: LlavaCaptioner,
        bertscore: BertScore,
        question: str = "Answer concisely: what is going on in this image?",
        reference: str = "The image contains {prompt}",
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
    ):
        super().__init__(device, dtype, batch_size)
        if "{prompt}" not in reference:
            raise ConfigError(f"reward.reference={reference!r} must contain {{prompt}}")
        llava.model = self.place(llava.model)
        bertscore.model = self.place(bertscore.model, dtype=torch.float32)
        self.llava, self.bertscore = llava, bertscore
        self.question, self.reference = question, reference
        self.last_captions: list[str] = []

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        captions = self.llava.answer(images, self.question)
        self.last_captions = captions
        return self.bertscore.recall(captions, [self.reference.format(prompt=p) for p in prompts])


class LlavaVQA(LearnedReward):
    """Mean over an image's questions (metadata "questions") of [its answer (metadata "answers") is a
    substring of LLaVA's reply], exact and case-sensitive as the reference."""

    name = "llava_vqa"

    def __init__(self, llava: LlavaCaptioner, device: str = "auto", dtype: str = "float32", batch_size: int = 4):
        super().__init__(device, dtype, batch_size)
        llava.model = self.place(llava.model)
        self.llava = llava

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        scores = []
        for image, meta in zip(images, metadata, strict=True):
            questions, answers = meta.get("questions"), meta.get("answers")
            if not questions or answers is None or len(questions) != len(answers):
                raise ConfigError(
                    "reward=llava_vqa needs prompts whose metadata hold 'questions' and 'answers' lists of equal length"
                )
            replies = [self.llava.answer(image[None].to(self.device), q)[0] for q in questions]
            scores.append(sum(a in r for a, r in zip(answers, replies, strict=True)) / len(questions))
        return torch.tensor(scores, dtype=torch.float32)

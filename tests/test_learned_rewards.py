"""Learned rewards on tiny random weights, each checked against an independent computation of its
formula; HPSv2's open_clip checkpoint layout against an independent open_clip-style model."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel

from rlft.embedders import clip_preprocess, tiny_clip
from rlft.errors import ConfigError
from rlft.models import character_tokenizer
from rlft.rewards import AestheticScore, HPSv2, ImageReward, LlavaBertScore, LlavaVQA, PickScore
from rlft.rewards.bertscore import greedy_recall
from rlft.rewards.clip_models import tiny_clip_config, tiny_clip_towers
from rlft.rewards.imagereward import blip_to_transformers
from rlft.rewards.llava import tiny_bertscore, tiny_llava
from rlft.rewards.open_clip_keys import open_clip_to_transformers

PROMPTS = ["a cat", "a dog riding a bike", "an owl"]


@pytest.fixture
def images():
    return torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(0))  # not square, not 32


def released_head_state(input_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A head state dict in the released file's key layout (layers.0/2/4/6/7)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [(input_dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state = {}
    for index, (a, b) in zip([0, 2, 4, 6, 7], sizes, strict=True):
        state[f"layers.{index}.weight"] = torch.randn(b, a, generator=generator) * 0.05
        state[f"layers.{index}.bias"] = torch.randn(b, generator=generator) * 0.05
    return state


def test_aesthetic_is_the_linear_head_on_the_normalized_embedding(tmp_path, images):
    state = released_head_state(32)
    torch.save(state, tmp_path / "head.pth")
    reward = AestheticScore(tiny_clip(seed=1), head_path=str(tmp_path / "head.pth"), device="cpu", batch_size=2)
    embedder = tiny_clip(seed=1)
    x = embedder.model(pixel_values=clip_preprocess(images, 32)).image_embeds
    x = x / x.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # no activations between the linear layers
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    torch.testing.assert_close(reward(images, PROMPTS, [{}] * 3), x.squeeze(-1))


def test_aesthetic_without_its_head_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth"):
        AestheticScore(tiny_clip(), head_path=None, device="cpu")
    with pytest.raises(ConfigError, match="improved-aesthetic-predictor"):
        AestheticScore(tiny_clip(), head_path=str(tmp_path / "missing.pth"), device="cpu")


@pytest.mark.parametrize("logit_scale", [True, False])
def test_pickscore_is_the_scaled_cosine(images, logit_scale):
    towers = tiny_clip_towers(seed=2)
    reward = PickScore(towers, logit_scale=logit_scale, device="cpu")
    reference = tiny_clip_towers(seed=2)
    tokens = reference.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    output = reference.model(input_ids=tokens.input_ids, pixel_values=clip_preprocess(images, 32))
    expected = output.logits_per_image.diagonal()  # exp(logit scale) * cosine, by transformers' CLIP
    if not logit_scale:
        expected = expected / reference.model.logit_scale.exp()
    torch.testing.assert_close(reward(images, PROMPTS, [{}] * 3), expected, rtol=1e-5, atol=1e-5)
    assert reference.model.logit_scale.exp().item() == pytest.approx(14.28, rel=1e-3)  # CLIP's initial exp(2.6592)


# -- an independent open_clip-style CLIP, written the way open_clip lays out its weights ---------
class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)  # in_proj_weight: fused q, k, v
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width))
        )

    def forward(self, x, mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads) for _ in range(layers))

    def forward(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTower(nn.Module):
    def __init__(self, image_size, patch, width, layers, heads, embed_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn((image_size // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed_dim) * 0.1)

    def forward(self, pixels):
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(len(x), 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class OpenClipStyle(nn.Module):
    def __init__(self, vocab=514, context=77, width=32, layers=2, heads=2, embed_dim=32):
        super().__init__()
        self.visual = VisionTower(32, 8, width, layers, heads, embed_dim)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.1)
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * 0.1)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def encode_text(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
        x = self.ln_final(self.transformer(x, causal))
        return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ self.text_projection  # the end-of-text token


def open_clip_state(seed=0):
    torch.manual_seed(seed)
    model = OpenClipStyle()
    return model, model.state_dict()


def test_open_clip_keys_convert_without_missing_or_unexpected():
    _, state = open_clip_state()
    assert any("in_proj_weight" in k for k in state)
    model = CLIPModel(tiny_clip_config())
    result = model.load_state_dict(open_clip_to_transformers(state), strict=False)
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if not k.endswith("position_ids")] == []


def test_unknown_open_clip_key_is_an_error():
    with pytest.raises(KeyError, match="visual.extra"):
        open_clip_to_transformers({"visual.extra": torch.zeros(1)})


def test_hpsv2_scores_equal_the_open_clip_model(tmp_path, images):
    reference, state = open_clip_state()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "HPS_tiny.pt")
    reward = HPSv2(architecture="tiny", checkpoint=str(tmp_path / "HPS_tiny.pt"), device="cpu", batch_size=2)
    ids = character_tokenizer()(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        image = F.normalize(reference.visual(clip_preprocess(images, 32)), dim=-1)
        text = F.normalize(reference.encode_text(ids), dim=-1)
    torch.testing.assert_close(reward(images, PROMPTS, [{}] * 3), (image * text).sum(-1), rtol=1e-4, atol=1e-5)


def test_hpsv2_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"HPS_v2\.1_compressed\.pt"):
        HPSv2(version="2.1", architecture="tiny", checkpoint=str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(ConfigError, match="^version='3' is not one of"):  # (reward.version= when built from conf/)
        HPSv2(version="3", architecture="tiny", device="cpu")


# -- ImageReward ------------------------------------------------------------------------------
def blip_layout_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny ImageReward.pt written with BLIP's original names (vit.py, med.py) and the head's."""
    generator = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    d, f, patches, vocab, positions = 32, 64, 16, 64, 64
    state = {
        "blip.visual_encoder.cls_token": r(1, 1, d),
        "blip.visual_encoder.pos_embed": r(1, patches + 1, d),
        "blip.visual_encoder.patch_embed.proj.weight": r(d, 3, 8, 8),
        "blip.visual_encoder.patch_embed.proj.bias": r(d),
        "blip.visual_encoder.norm.weight": 1 + r(d),
        "blip.visual_encoder.norm.bias": r(d),
        "blip.text_encoder.embeddings.word_embeddings.weight": r(vocab, d),
        "blip.text_encoder.embeddings.position_embeddings.weight": r(positions, d),
        "blip.text_encoder.embeddings.LayerNorm.weight": 1 + r(d),
        "blip.text_encoder.embeddings.LayerNorm.bias": r(d),
        "blip.text_encoder.embeddings.position_ids": torch.arange(positions)[None],
        "blip.vision_proj.weight": r(16, d),  # parts of BLIP the score does not use
        "blip.itm_head.weight": r(2, d),
    }
    for i in range(2):
        block = f"blip.visual_encoder.blocks.{i}."
        for name, shape in [("norm1", (d,)), ("norm2", (d,))]:
            state[f"{block}{name}.weight"], state[f"{block}{name}.bias"] = 1 + r(*shape), r(*shape)
        for name, (out, inp) in {
            "attn.qkv": (3 * d, d),
            "attn.proj": (d, d),
            "mlp.fc1": (f, d),
            "mlp.fc2": (d, f),
        }.items():
            state[f"{block}{name}.weight"], state[f"{block}{name}.bias"] = r(out, inp), r(out)
        layer = f"blip.text_encoder.encoder.layer.{i}."
        for attention in ("attention", "crossattention"):
            for name in ("self.query", "self.key", "self.value", "output.dense"):
                state[f"{layer}{attention}.{name}.weight"], state[f"{layer}{attention}.{name}.bias"] = r(d, d), r(d)
            state[f"{layer}{attention}.output.LayerNorm.weight"] = 1 + r(d)
            state[f"{layer}{attention}.output.LayerNorm.bias"] = r(d)
        state[f"{layer}intermediate.dense.weight"], state[f"{layer}intermediate.dense.bias"] = r(f, d), r(f)
        state[f"{layer}output.dense.weight"], state[f"{layer}output.dense.bias"] = r(d, f), r(d)
        state[f"{layer}output.LayerNorm.weight"], state[f"{layer}output.LayerNorm.bias"] = 1 + r(d), r(d)
    for key, value in released_head_state(d, seed).items():
        state[f"mlp.{key}"] = value
    return state


def test_imagereward_checkpoint_in_blip_names_loads_completely(tmp_path):
    state = blip_layout_checkpoint()
    torch.save(state, tmp_path / "ImageReward.pt")
    reward = ImageReward(architecture="tiny", checkpoint=str(tmp_path / "ImageReward.pt"), device="cpu")
    # strict loading inside: every converted key found a parameter and every parameter was given one
    torch.testing.assert_close(reward.vision.embeddings.class_embedding, state["blip.visual_encoder.cls_token"])
    qkv = reward.vision.encoder.layers[1].self_attn.qkv.weight
    torch.testing.assert_close(qkv, state["blip.visual_encoder.blocks.1.attn.qkv.weight"])
    cross = reward.text.encoder.layer[0].crossattention.self.key.weight
    torch.testing.assert_close(cross, state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"])
    with pytest.raises(KeyError, match="blip.visual_encoder.blocks.0.extra"):
        blip_to_transformers({"blip.visual_encoder.blocks.0.extra.weight": torch.zeros(1)})


@pytest.mark.parametrize("standardize", [True, False])
def test_imagereward_is_the_standardized_head_on_the_cross_attended_cls(tmp_path, images, standardize):
    state = blip_layout_checkpoint(seed=1)
    torch.save(state, tmp_path / "ImageReward.pt")
    reward = ImageReward(
        architecture="tiny", checkpoint=str(tmp_path / "ImageReward.pt"), standardize=standardize, device="cpu"
    )
    tokens = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens.input_ids.shape == (3, 35) and (tokens.input_ids[:, 0] == reward.tokenizer.cls_token_id).all()
    with torch.no_grad():
        image_tokens = reward.vision(pixel_values=clip_preprocess(images, 32)).last_hidden_state
        cls = reward.text(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=image_tokens,
        ).last_hidden_state[:, 0]
    x = cls
    for index in (0, 2, 4, 6, 7):
        x = x @ state[f"mlp.layers.{index}.weight"].T + state[f"mlp.layers.{index}.bias"]
    expected = (x.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072 if standardize else x.squeeze(-1)
    torch.testing.assert_close(reward(images, PROMPTS, [{}] * 3), expected, rtol=1e-5, atol=1e-5)


def test_imagereward_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"ImageReward\.pt.*THUDM/ImageReward"):
        ImageReward(architecture="tiny", checkpoint=str(tmp_path / "nope.pt"), device="cpu")


# -- LLaVA + BERTScore ------------------------------------------------------------------------
def test_greedy_recall_hand_values():
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert greedy_recall(reference, torch.tensor([1.0, 1.0]), torch.tensor([[2.0, 0.0]])).item() == 0.5
    assert greedy_recall(reference, torch.tensor([0.0, 1.0]), torch.tensor([[2.0, 0.0]])).item() == 0.0
    both = greedy_recall(reference, torch.tensor([1.0, 1.0]), torch.tensor([[1.0, 1.0]]))
    assert both.item() == pytest.approx(2**-0.5)


def test_bertscore_recall_skips_the_reference_special_tokens():
    scorer = tiny_bertscore()
    assert scorer.recall(["a cat riding"], ["a cat riding"]).item() == pytest.approx(1.0)
    hidden, mask, special = scorer.embed(["the dog", "a cat riding a bike"])
    ref, cand = hidden[0][mask[0]], hidden[1][mask[1]]
    weights = (~special[0][mask[0]]).float()
    assert weights[0] == 0 and weights[-1] == 0 and weights[1:-1].eq(1).all()  # [CLS] ... [SEP]
    similarity = F.normalize(ref, dim=-1) @ F.normalize(cand, dim=-1).T
    expected = similarity.max(dim=1).values[1:-1].mean()
    torch.testing.assert_close(scorer.recall(["a cat riding a bike"], ["the dog"])[0], expected)


def test_llava_bertscore_scores_captions_against_the_prompt_sentence(images):
    reward = LlavaBertScore(tiny_llava(seed=5), tiny_bertscore(seed=6), device="cpu")
    scores = reward(images, PROMPTS, [{}] * 3)
    captions = tiny_llava(seed=5).answer(images, "Answer concisely: what is going on in this image?")
    assert reward.last_captions == captions
    expected = tiny_bertscore(seed=6).recall(captions, [f"The image contains {p}" for p in PROMPTS])
    torch.testing.assert_close(scores, expected)


def test_llava_vqa_is_the_substring_accuracy(images):
    reward = LlavaVQA(tiny_llava(seed=5), device="cpu")
    reply = tiny_llava(seed=5).answer(images[:1], "how many?")[0]
    metadata = [{"questions": ["how many?", "how many?"], "answers": [reply[:2], reply + "never"]}]
    assert reward(images[:1], ["p"], metadata).tolist() == [0.5]
    with pytest.raises(ConfigError, match="'questions' and 'answers'"):
        reward(images[:1], ["p"], [{}])

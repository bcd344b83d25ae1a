"""The diffusion models rlft trains: built offline from configs (tiny, small) or loaded (sd14, sd15).

Every builder returns the same `Components`: a Stable-Diffusion-shaped UNet, VAE, CLIP text
encoder with its tokenizer, and the DDIM scheduler.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from rlft.ddim import make_scheduler
from rlft.errors import ConfigError

PIPELINE_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Components:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    # Where the base weights come from: a hub id or directory, or None for a model built here.
    source: str | None = None


def sd_pipeline(parts) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of `parts` (Components, or a Policy: anything with vae, text_encoder,
    tokenizer, unet and scheduler), without the safety checker, for saving in diffusers' format."""
    return StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=parts.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _byte_unicode_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def character_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges: any text, one token per byte.

    Real CLIP vocabularies cannot be downloaded here; this one is built offline, covers every
    prompt, and keeps CLIP's special tokens, padding and 77-token truncation.
    """
    alphabet = _byte_unicode_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = max_length
    return tokenizer


def word_tokenizer(words: list[str], max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer in which each of `words` is one token; other text falls back to bytes.

    Built as CLIP's own format (vocab + BPE merges) so that it saves and loads like any CLIP
    tokenizer: each word gets the chain of merges that spells it left to right. BPE applies the
    lowest-ranked applicable merge first, so longer words' chains are ranked first: a short word's
    first merge ("r e" of "red") would otherwise split a longer word containing it ("green").
    """
    alphabet = _byte_unicode_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words}, key=lambda w: (-len(w), w)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        spelled = pieces[0]
        for piece in pieces[1:]:
            merge = (spelled, piece)
            spelled += piece
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(spelled, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = max_length
    split = [word for word in words if len(tokenizer.tokenize(word)) != 1]
    if split:
        raise ValueError(f"word_tokenizer: {split} do not come out as one token each")
    return tokenizer


def build_offline(
    seed: int,
    resolution: int,
    unet_channels: list[int],
    vae_channels: list[int],
    text_width: int,
    text_layers: int,
    attention_head_dim: int = 8,
    layers_per_block: int = 1,
    vae_norm_groups: int = 1,
    vocabulary: list[str] | None = None,
    max_length: int = 77,
) -> Components:
    """A Stable-Diffusion-shaped model with random weights, identical for a given seed and shape.

    The tokenizer reads bytes, or with `vocabulary` whole words (one token each, bytes for the
    rest); `max_length` is the padded prompt length the text encoder sees."""
    tokenizer = word_tokenizer(vocabulary, max_length) if vocabulary else character_tokenizer(max_length)
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_width,
                intermediate_size=4 * text_width,
                num_hidden_layers=text_layers,
                num_attention_heads=max(1, text_width // 16),
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        levels = len(unet_channels)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2 ** (len(vae_channels) - 1),
            in_channels=4,
            out_channels=4,
            block_out_channels=tuple(unet_channels),
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            layers_per_block=layers_per_block,
            cross_attention_dim=text_width,
            attention_head_dim=attention_head_dim,
            norm_num_groups=min(32, unet_channels[0]),
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=tuple(vae_channels),
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            layers_per_block=1,
            # One norm group: with per-channel groups a random decoder normalizes the latents' content
            # away and every image looks alike, leaving a reward nothing to learn from.
            norm_num_groups=vae_norm_groups,
            sample_size=resolution,
        )
    return Components(unet, vae, text_encoder, tokenizer, make_scheduler())


def _missing_model_message(
    name_or_path: str,
    reason: str,
    hub_id: str,
    directory: Path | None = None,
    subfolders: tuple[str, ...] = PIPELINE_SUBFOLDERS,
) -> str:
    """The error for a model that cannot be loaded; `directory`: the model.path given, if any;
    `subfolders`: the pipeline's components (SD 1.x's by default). It names the key of the loader's
    `path` (rlft.errors.ConfigError): model.path for model=sd14."""
    if directory is None:
        fix = f"run `hf download {hub_id}` (or let the run download it)"
    else:
        fix = f"run `hf download {hub_id} --local-dir {directory}`"
    return (
        f"{{key}}={directory or 'null'}: cannot load the model '{name_or_path}': {reason}. A diffusers pipeline "
        f"directory is needed with model_index.json and the subfolders {', '.join(subfolders)}. Fix: on "
        f"a machine with internet access {fix}, or copy such a directory here and pass {{key}}=/path/to/it."
    )


@dataclass(frozen=True)
class PipelineSource:
    """Where a family's loader reads a diffusers pipeline from: `name` and `kwargs` for each
    component's from_pretrained; `directory` the model.path given (None: the hub id)."""

    name: str
    kwargs: dict
    hub_id: str
    directory: Path | None
    subfolders: tuple[str, ...]

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Around loading the components: one that is missing or unreadable becomes one ConfigError
        line naming model.path and the fix."""
        try:
            yield
        except (OSError, ValueError) as error:
            if self.directory is not None:
                reason = "a component of it could not be loaded"
            else:
                offline = os.environ.get("HF_HUB_OFFLINE") == "1"
                reason = "it is not in the local Hugging Face cache" + (" and HF_HUB_OFFLINE=1" if offline else "")
            reason = f"{reason} ({type(error).__name__})"
            message = _missing_model_message(self.name, reason, self.hub_id, self.directory, self.subfolders)
            raise ConfigError(message, "path") from error


def pipeline_source(
    hub_id: str, path: str | None, revision: str | None, subfolders: tuple[str, ...] = PIPELINE_SUBFOLDERS
) -> PipelineSource:
    """A local pipeline directory (model.path; it must hold model_index.json) or else the hub id."""
    directory = Path(path).expanduser() if path is not None else None
    if directory is None:
        return PipelineSource(hub_id, {"revision": revision}, hub_id, None, subfolders)
    if not (directory / "model_index.json").is_file():
        message = _missing_model_message(str(directory), "model_index.json not found there", hub_id, directory, subfolders)
        raise ConfigError(message, "path")
    return PipelineSource(str(directory), {}, hub_id, directory, subfolders)


def load_pretrained(hub_id: str, path: str | None = None, revision: str | None = None) -> Components:
    """Load Stable Diffusion components from a local pipeline directory or a hub id."""
    where = pipeline_source(hub_id, path, revision)
    source, kwargs = where.name, where.kwargs
    with where.loading():
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
        scheduler_config = DDIMScheduler.load_config(source, subfolder="scheduler", **kwargs)
    return Components(unet, vae, text_encoder, tokenizer, DDIMScheduler.from_config(scheduler_config), source)

"""Stable Diffusion 3 and 3.5: a rectified-flow transformer (MMDiT) as a policy
(docs/algorithms.md#sd3-and-sd35).

The components are built offline with random weights (`build_tiny_sd3`, diffusers' own test shapes)
or loaded from a pipeline directory or the hub (`load_sd3`). `SD3Policy` encodes prompts, takes
guided flow steps through rlft/kernels (Flow-GRPO's SDE step, or the Euler step), decodes, trains
LoRA adapters on the transformer's attention and exports them in diffusers' SD3 LoRA format.
Text encoding and guidance follow diffusers' StableDiffusion3Pipeline line for line, so that the
policy and the pipeline compute the same thing (tests/test_sd3.py compares their latents bit for bit).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
from omegaconf import OmegaConf
from peft.utils import get_peft_model_state_dict
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from rlft.errors import ConfigError
from rlft.families.base import DiffusionPolicy, levels_at
from rlft.families.conditioning import TextConditioning
from rlft.families.sd1 import window_timesteps
from rlft.kernels import Transition, euler_transition
from rlft.kernels.choice import FlowGRPOKernel, Kernel
from rlft.models import character_tokenizer, pipeline_source
from rlft.streams import RandomStream

SD3_HUB_ID = "stabilityai/stable-diffusion-3.5-medium"
SD3_SUBFOLDERS = (
    "transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
    "text_encoder_3", "tokenizer_3", "scheduler",
)  # fmt: skip
# SD3's VAE latents are shifted and scaled to unit variance: z = (x - shift) * scale.
SD3_SHIFT_FACTOR = 0.0609
SD3_SCALING_FACTOR = 1.5305
# Flow-GRPO's adapters: the joint attention's image and text projections (attn, not SD3.5's attn2).
SD3_LORA_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
]  # fmt: skip
# B = 0 at the start, so the initial policy is exactly the base model (docs/algorithms.md#lora).
SD3_LORA = {"r": 32, "lora_alpha": 64, "init_lora_weights": "gaussian", "target_modules": SD3_LORA_TARGETS}
# diffusers' default T5 sequence length for SD3 (its encode_prompt's max_sequence_length).
T5_MAX_LENGTH = 256


@dataclass
class SD3Components:
    transformer: SD3Transformer2DModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer_2: CLIPTokenizer
    # T5 is optional: without it diffusers conditions on zeros in its place.
    text_encoder_3: T5EncoderModel | None
    tokenizer_3: T5Tokenizer | None
    scheduler: FlowMatchEulerDiscreteScheduler
    # A hub id or directory, or None for a model built here.
    source: str | None = None


def sd3_pipeline(parts) -> StableDiffusion3Pipeline:
    """A StableDiffusion3Pipeline of `parts` (SD3Components or an SD3Policy)."""
    return StableDiffusion3Pipeline(
        transformer=parts.transformer,
        scheduler=parts.scheduler,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        text_encoder_2=parts.text_encoder_2,
        tokenizer_2=parts.tokenizer_2,
        text_encoder_3=parts.text_encoder_3,
        tokenizer_3=parts.tokenizer_3,
    )


def t5_character_tokenizer() -> T5Tokenizer:
    """A T5 (unigram) tokenizer over printable ASCII, one token per character, built offline."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.printable if not c.isspace()]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _tiny_clip(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,  # the penultimate layer's states condition SD3: keep one real layer below it
            num_attention_heads=4,
            projection_dim=32,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_sd3(seed: int = 0, t5: bool = False, sample_size: int = 32) -> SD3Components:
    """An SD3-shaped model with random weights in diffusers' test shapes (one joint block, a VAE that
    keeps the latents' size), identical for a given seed; `sample_size` x `sample_size` latents and
    images (diffusers' tests: 32); with `t5` a tiny T5 encoder too, else none (zeros)."""
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=sample_size,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,  # the two CLIP projections, concatenated
            out_channels=4,
        )
        tokenizer, tokenizer_2 = character_tokenizer(), character_tokenizer()
        text_encoder, text_encoder_2 = _tiny_clip(tokenizer), _tiny_clip(tokenizer_2)
        text_encoder_3 = tokenizer_3 = None
        if t5:
            tokenizer_3 = t5_character_tokenizer()
            text_encoder_3 = T5EncoderModel(
                T5Config(
                    vocab_size=len(tokenizer_3),
                    d_model=32,  # = joint_attention_dim: T5's states join CLIP's along the sequence
                    d_kv=8,
                    d_ff=64,
                    num_layers=1,
                    num_heads=4,
                    relative_attention_num_buckets=8,
                    pad_token_id=tokenizer_3.pad_token_id,
                    eos_token_id=tokenizer_3.eos_token_id,
                    decoder_start_token_id=tokenizer_3.pad_token_id,
                )
            )
        vae = AutoencoderKL(
            sample_size=sample_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=(4,),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=SD3_SHIFT_FACTOR,
            scaling_factor=SD3_SCALING_FACTOR,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return SD3Components(
        transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3, tokenizer_3, scheduler
    )


def load_sd3(
    hub_id: str = SD3_HUB_ID, path: str | None = None, revision: str | None = None, t5: bool = True
) -> SD3Components:
    """Load SD3 / SD3.5 components from a local pipeline directory or a hub id; `t5=False` skips
    the T5 encoder (about 9 GB in bf16; diffusers then conditions on zeros in its place)."""
    subfolders = SD3_SUBFOLDERS if t5 else SD3_SUBFOLDERS[:6] + SD3_SUBFOLDERS[8:]
    where = pipeline_source(hub_id, path, revision, subfolders)
    source, kwargs = where.name, where.kwargs
    with where.loading():
        transformer = SD3Transformer2DModel.from_pretrained(source, subfolder="transformer", **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
        encoders = [
            CLIPTextModelWithProjection.from_pretrained(source, subfolder=name, **kwargs)
            for name in ("text_encoder", "text_encoder_2")
        ]
        tokenizers = [
            CLIPTokenizer.from_pretrained(source, subfolder=name, **kwargs) for name in ("tokenizer", "tokenizer_2")
        ]
        text_encoder_3 = tokenizer_3 = None
        if t5:
            text_encoder_3 = T5EncoderModel.from_pretrained(source, subfolder="text_encoder_3", **kwargs)
            tokenizer_3 = T5Tokenizer.from_pretrained(source, subfolder="tokenizer_3", **kwargs)
        scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler", **kwargs)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    return SD3Components(
        transformer, vae, encoders[0], tokenizers[0], encoders[1], tokenizers[1], text_encoder_3, tokenizer_3, scheduler,
        source,
    )  # fmt: skip


class SD3Policy(DiffusionPolicy):
    """The flow-matching family's policy: the SD3 transformer's guided velocity, stepped by a flow
    kernel along the scheduler's sigma schedule, on a TextConditioning (joint sequence and pooled
    projections)."""

    denoiser_name = "transformer"
    parametrisation = "flow"
    family = "SD3"

    def __init__(
        self,
        components: SD3Components,
        lora: dict | None = SD3_LORA,
        frozen_dtype: str = "float32",
        keep_reference: bool = False,
        max_sequence_length: int = T5_MAX_LENGTH,
        resolution: int | None = None,
        kernel: Kernel | None = None,
        compile_unet: bool | dict = False,
        channels_last: bool = False,
        gradient_checkpointing: bool = False,
    ):
        """`lora`: peft LoraConfig arguments for the transformer (None: fine-tune all of it);
        `keep_reference`: with full fine-tuning, keep a frozen copy as the reference policy (with
        LoRA the reference is the same transformer with its adapters disabled); `kernel`: a flow
        kernel, Flow-GRPO's SDE (noise level 0.7) by default; `max_sequence_length`: T5's (and, without
        T5, the zeros') share of the joint sequence; `resolution`: the images' side in pixels (None: the
        transformer's own sample_size, its native size), latents of resolution / the VAE's downscale
        (8 for SD3's), which the transformer's cropped position embedding takes. Speed options as
        SD 1.x's: `compile_unet` compiles the transformer in place, `gradient_checkpointing` recomputes
        its blocks in backward; `channels_last` has nothing to act on in a transformer (its inputs are
        token sequences)."""
        super().__init__()
        self.transformer = components.transformer
        self.vae = components.vae
        self.text_encoder, self.tokenizer = components.text_encoder, components.tokenizer
        self.text_encoder_2, self.tokenizer_2 = components.text_encoder_2, components.tokenizer_2
        self.text_encoder_3, self.tokenizer_3 = components.text_encoder_3, components.tokenizer_3
        self.scheduler = components.scheduler
        self.source = components.source
        self.max_sequence_length = max_sequence_length
        self.latent_side = self._latent_side(resolution)
        self.kernel = self.check_kernel(FlowGRPOKernel() if kernel is None else kernel)
        if lora is not None and not isinstance(lora, dict):  # a DictConfig from the run's config
            lora = OmegaConf.to_container(OmegaConf.create(lora), resolve=True)
        encoders = [self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3]
        self.setup_weights(encoders, lora, frozen_dtype, keep_reference)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if compile_unet:
            self.transformer.compile(**(compile_unet if isinstance(compile_unet, dict) else {}))
        negative = self.encode_prompts([""])
        self.register_buffer("negative_hidden_states", negative.hidden_states, persistent=False)
        self.register_buffer("negative_pooled", negative.pooled, persistent=False)

    def _latent_side(self, resolution: int | None) -> int:
        config = self.transformer.config
        if resolution is None:
            return config.sample_size
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)  # the VAE's downscale, as diffusers computes it
        step = scale * config.patch_size
        # (the position embedding is cropped from a pos_embed_max_size grid of patches; without one it
        # is computed for any size)
        most = None if config.pos_embed_max_size is None else config.pos_embed_max_size * step
        if not isinstance(resolution, int) or resolution <= 0 or resolution % step or resolution > (most or resolution):
            raise ConfigError(
                f"model.policy.resolution={resolution}: give a multiple of {step} (the VAE's downscale x the patch "
                f"size){f' up to {most}' if most else ''} pixels, e.g. {config.sample_size * scale}, the model's own"
            )
        return resolution // scale

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.transformer.config.in_channels, self.latent_side, self.latent_side)

    @property
    def reference_transformer(self) -> nn.Module | None:
        return self.reference_denoiser

    # -- text -------------------------------------------------------------------------------
    def _clip(self, prompts: list[str], tokenizer: CLIPTokenizer, encoder: nn.Module):
        # As diffusers' _get_clip_prompt_embeds: both CLIPs pad to the first tokenizer's length; the
        # penultimate layer's states condition the transformer, the projected EOS state is pooled.
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        return out.hidden_states[-2].to(dtype=self.text_encoder.dtype), out[0]

    def _t5(self, prompts: list[str]) -> torch.Tensor:
        if self.text_encoder_3 is None:  # diffusers: zeros of T5's shape in the joint width
            shape = (len(prompts), self.max_sequence_length, self.transformer.config.joint_attention_dim)
            return torch.zeros(shape, device=self.text_encoder.device, dtype=self.text_encoder.dtype)
        ids = self.tokenizer_3(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder_3(ids.to(self.text_encoder_3.device))[0].to(dtype=self.text_encoder_3.dtype)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> TextConditioning:
        """The joint sequence [CLIP-L | CLIP-G states, padded to the joint width ; T5 states]
        (B, 77 + max_sequence_length, joint_attention_dim) and the pooled [CLIP-L ; CLIP-G]
        projections (B, pooled_projection_dim), as diffusers' encode_prompt forms them."""
        hidden_1, pooled_1 = self._clip(prompts, self.tokenizer, self.text_encoder)
        hidden_2, pooled_2 = self._clip(prompts, self.tokenizer_2, self.text_encoder_2)
        clip = torch.cat([hidden_1, hidden_2], dim=-1)
        t5 = self._t5(prompts)
        # (The pad is negative, a crop, where the CLIP width exceeds the joint width, as in diffusers.)
        clip = nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return TextConditioning(torch.cat([clip, t5], dim=-2), torch.cat([pooled_1, pooled_2], dim=-1))

    @property
    def negative_conditioning(self) -> TextConditioning:
        """The empty prompt's conditioning (batch 1): guidance's unconditional branch."""
        return TextConditioning(self.negative_hidden_states, self.negative_pooled)

    # -- the schedule -----------------------------------------------------------------------
    def sigmas(self, num_steps: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The scheduler's noise levels s_0 = 1 > ... > s_T = 0 (T + 1 values, float32) for
        `num_steps` steps, with its shift (3 for SD3), as the pipeline sets them."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)  # leave ours untouched
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            size = self.latent_side // self.transformer.config.patch_size  # the image's, as the pipeline's
            config = scheduler.config
            kwargs["mu"] = calculate_shift(
                size * size,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(num_steps, device=device, **kwargs)
        return scheduler.sigmas

    def schedule(self, num_steps: int) -> torch.Tensor:
        return self.sigmas(num_steps)

    # -- the policy's action ------------------------------------------------------------------
    def velocity_at(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        conditioning: TextConditioning,
        guidance_scale: float,
        reference: bool = False,
    ) -> torch.Tensor:
        """The guided velocity at noise level `sigma` (0-d or (B,)), in the transformer's dtype: one
        call on [unconditional; conditional]."""
        with self.weights(reference) as transformer:
            dtype = next(transformer.parameters()).dtype
            timestep = (sigma * self.scheduler.config.num_train_timesteps).expand(len(latents))
            latents = latents.to(dtype)
            if guidance_scale > 1.0:
                negative = self.negative_conditioning.expand(len(latents))
                conditioning = TextConditioning.cat([negative, conditioning])
                latents, timestep = torch.cat([latents, latents]), torch.cat([timestep, timestep])
            conditioning = conditioning.to(dtype)
            out = transformer(
                hidden_states=latents,
                timestep=timestep,
                encoder_hidden_states=conditioning.hidden_states,
                pooled_projections=conditioning.pooled,
                return_dict=False,
            )[0]
        if guidance_scale > 1.0:
            uncond, cond = out.chunk(2)
            return uncond + guidance_scale * (cond - uncond)
        return out

    def velocity(
        self,
        latents: torch.Tensor,
        step_index: int | torch.Tensor,
        sigmas: torch.Tensor,
        conditioning: TextConditioning,
        guidance_scale: float,
        reference: bool = False,
    ) -> torch.Tensor:
        """The guided velocity at noise level sigmas[step_index] (an int, or (B,) indices)."""
        return self.velocity_at(latents, sigmas[step_index], conditioning, guidance_scale, reference)

    def transition(
        self,
        latents: torch.Tensor,
        step_index: int | torch.Tensor,
        schedule: torch.Tensor,
        conditioning: TextConditioning,
        guidance_scale: float,
        *,
        noise: torch.Tensor | None = None,
        next_latents: torch.Tensor | None = None,
        reference: bool = False,
    ) -> Transition:
        """The configured kernel's step from level j = `step_index` (an int or (B,)) of `schedule`
        ((T + 1,) or (B, T + 1) sigmas) to level j + 1."""
        sigma, sigma_next = levels_at(schedule, step_index, len(latents))
        velocity = self.velocity_at(latents, sigma, conditioning, guidance_scale, reference)
        return self.kernel(latents, velocity, sigma, sigma_next, schedule, noise, next_latents)

    def ode_step(
        self,
        latents: torch.Tensor,
        step_index: int | torch.Tensor,
        sigmas: torch.Tensor,
        conditioning: TextConditioning,
        guidance_scale: float,
        reference: bool = False,
    ) -> Transition:
        """The deterministic Euler step (the pipeline's sampler); log_prob None."""
        velocity = self.velocity(latents, step_index, sigmas, conditioning, guidance_scale, reference)
        return euler_transition(latents, velocity, sigmas[step_index], sigmas[step_index + 1])

    # -- the family's denoising loss --------------------------------------------------------------
    def denoising_loss(
        self,
        latents: torch.Tensor,
        conditioning: TextConditioning,
        guidance_scale: float,
        stream: RandomStream,
        window: tuple[float, float],
        levels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow matching's loss per sample: mean over (C, H, W) of (eps - x0 - v(x_s, s))^2 on
        x_s = (1 - s) x0 + s eps, eps ~ N(0, I), with s = shift u / (1 + (shift - 1) u) for u = t / 1000
        and t drawn uniformly from the window's training timesteps (1..1000 for the whole chain): the
        scheduler's own shifted levels, as its sampler spaces them
        (docs/algorithms.md#the-flow-matching-denoising-loss). `levels`: u per sample, drawn by the
        caller instead (pretraining's logit-normal draw), the window then ignored."""
        if levels is None:
            total = self.scheduler.config.num_train_timesteps
            drawn = window_timesteps(total, window)
            t = stream.integers(drawn.start, drawn.stop, (len(latents),), latents.device)
            u = (t.float() + 1) / total  # in (0, 1]: s = 0 (the clean image) is not a training level
        else:
            u = levels.to(latents.device, torch.float32)
        shift = float(self.scheduler.config.get("shift", 1.0))
        sigma = shift * u / (1 + (shift - 1) * u)
        noise = stream.normal(latents.shape, latents.device)
        x0 = latents.float()
        s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
        noisy = (1 - s) * x0 + s * noise
        predicted = self.velocity_at(noisy, sigma, conditioning, guidance_scale).float()
        return ((predicted - (noise - x0)) ** 2).mean(dim=tuple(range(1, x0.ndim)))

    # -- export -----------------------------------------------------------------------------
    def pipeline(self) -> StableDiffusion3Pipeline:
        return sd3_pipeline(self)

    def save_lora(self, directory: Path) -> None:
        """diffusers' SD3 LoRA format with the adapter config (rank, alpha) as metadata (load with
        StableDiffusion3Pipeline.load_lora_weights). A pipeline without T5 is saved without it: load
        it with `text_encoder_3=None, tokenizer_3=None`."""
        StableDiffusion3Pipeline.save_lora_weights(
            directory,
            transformer_lora_layers=get_peft_model_state_dict(self.transformer),
            transformer_lora_adapter_metadata=self.transformer.peft_config["default"].to_dict(),
            safe_serialization=True,
        )

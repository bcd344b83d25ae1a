"""The policy: a text-conditioned diffusion model whose DDIM steps are Gaussian actions.

One object owns text encoding, classifier-free guidance, the log-prob step, decoding, LoRA and
export, so that sampling and training evaluate the policy through the same code path.
"""

from __future__ import annotations

import copy
import importlib
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

from rlft.ddim import ddim_step_with_logprob
from rlft.errors import ConfigError
from rlft.models import Components, sd_pipeline
from rlft.streams import RandomStream

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@contextmanager
def network_weights(network: nn.Module, frozen_copy: nn.Module | None, has_adapters: bool, reference: bool):
    """The network a step evaluates: the trained one, or with `reference` the base model's weights:
    the frozen copy kept for full fine-tuning, else the same network with its LoRA adapters disabled
    (no second copy in memory). Every family's policy evaluates its reference this way."""
    if not reference:
        yield network
    elif frozen_copy is not None:
        yield frozen_copy
    elif has_adapters:
        network.disable_adapters()
        try:
            yield network
        finally:
            network.enable_adapters()
    else:
        raise RuntimeError("this policy was built without keep_reference=True")


class Policy(nn.Module):
    def __init__(
        self,
        components: Components,
        lora: DictConfig | dict | None,
        frozen_dtype: str = "float32",
        keep_reference: bool = False,
        compile_unet: bool | dict = False,
        channels_last: bool = False,
        gradient_checkpointing: bool = False,
    ):
        """`keep_reference`: keep the base model as a frozen reference policy (KL regularization).
        With LoRA that is the same UNet with its adapters disabled; with full fine-tuning, a frozen
        copy of the UNet made before training.

        Speed and memory options, none of which changes what is computed: `compile_unet` (True or
        torch.compile's keyword arguments) compiles the UNet in place, so sampling and training call
        the same compiled module and checkpoints keep their key names; `channels_last` stores the
        UNet's weights and feeds its inputs in channels-last layout; `gradient_checkpointing`
        recomputes the UNet blocks' activations during backward instead of keeping them."""
        super().__init__()
        self.unet = components.unet
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scheduler = components.scheduler
        self.source = components.source
        self.lora_config = None if lora is None else OmegaConf.to_container(OmegaConf.create(lora), resolve=True)

        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        dtype = DTYPES[frozen_dtype]
        # Frozen weights may live in half precision to save memory; trainable ones stay float32.
        self.vae.to(dtype)
        self.text_encoder.to(dtype)
        self.reference_unet = None
        if keep_reference and self.lora_config is None:
            self.reference_unet = copy.deepcopy(self.unet).requires_grad_(False).to(dtype).eval()
        if self.lora_config is not None:
            self.unet.requires_grad_(False)
            self.unet.to(dtype)
            self.unet.add_adapter(LoraConfig(**self.lora_config))
            for param in self.unet.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        self.vae.eval()
        self.text_encoder.eval()
        self.unet.eval()  # SD UNets have no dropout; eval keeps any that a config adds deterministic
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()  # diffusers: active whenever grad is enabled
        if compile_unet:
            self.unet.compile(**(compile_unet if isinstance(compile_unet, dict) else {}))
        self.register_buffer("negative_embedding", self.encode_prompts([""]), persistent=False)

    # -- text -------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP hidden states (B, 77, D) of the padded prompts (not the pooled output)."""
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    # -- the policy's action ------------------------------------------------------------------
    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        guidance_scale: float,
        unet: nn.Module | None = None,
    ) -> torch.Tensor:
        """The guided noise prediction; one UNet call on the [unconditional; conditional] batch."""
        unet = self.unet if unet is None else unet
        if self.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        if guidance_scale <= 1.0:
            return unet(latents, timesteps, prompt_embeds).sample
        negative = self.negative_embedding.to(prompt_embeds.dtype).expand(len(latents), -1, -1)
        out = unet(
            torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), torch.cat([negative, prompt_embeds])
        ).sample
        uncond, cond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def step(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        guidance_scale: float,
        eta: float,
        next_latents: torch.Tensor | None = None,
        stream: RandomStream | None = None,
        reference: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the action x_{t-1} with noise from `stream` (or, given `next_latents`, score it);
        returns it and its log-prob. `reference=True` evaluates the frozen base model instead of the
        trained one."""
        noise_pred = self.noise_prediction(latents, timesteps, prompt_embeds, guidance_scale, reference)
        noise = None if stream is None else stream.normal(latents.shape, device=latents.device)
        return ddim_step_with_logprob(
            self.scheduler, noise_pred, timesteps, latents, eta, prev_sample=next_latents, noise=noise
        )

    def noise_prediction(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        guidance_scale: float,
        reference: bool = False,
    ) -> torch.Tensor:
        """The guided model output that `step` feeds the kernel, in the UNet's dtype, from the
        trained weights or (`reference=True`) the frozen base model's."""
        with self._weights(reference) as unet:
            unet_dtype = next(unet.parameters()).dtype
            return self.predict_noise(
                latents.to(unet_dtype), timesteps, prompt_embeds.to(unet_dtype), guidance_scale, unet
            )

    def _weights(self, reference: bool):
        return network_weights(self.unet, self.reference_unet, self.lora_config is not None, reference)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in [0, 1], float32 (B, 3, H, W)."""
        scaled = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(scaled).sample.float()
        return (images / 2 + 0.5).clamp(0, 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    # -- export -----------------------------------------------------------------------------
    def pipeline(self) -> StableDiffusionPipeline:
        return sd_pipeline(self)

    def export(self, directory: str | Path) -> Path:
        """Write the trained weights in diffusers' format; returns the directory.

        LoRA: `lora/pytorch_lora_weights.safetensors` (load with `pipe.load_lora_weights`), and for a
        model built offline (no hub id to load the base from) the base pipeline in `base/`.
        Full fine-tuning: the whole pipeline with the trained UNet in `pipeline/`.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.lora_config is None:
            self.pipeline().save_pretrained(directory / "pipeline", safe_serialization=True)
            return directory
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        StableDiffusionPipeline.save_lora_weights(directory / "lora", unet_lora_layers=layers, safe_serialization=True)
        if self.source is None:
            self._save_base_pipeline(directory / "base")
        (directory / "BASE_MODEL.txt").write_text((self.source or str(directory / "base")) + "\n")
        return directory

    def _save_base_pipeline(self, directory: Path) -> None:
        """Save the pipeline without the adapters (a fresh UNet with the base weights)."""
        base_unet = UNet2DConditionModel.from_config(self.unet.config)
        base_state = {
            key.replace(".base_layer", ""): value for key, value in self.unet.state_dict().items() if "lora_" not in key
        }
        base_unet.load_state_dict(base_state)
        pipe = self.pipeline()
        pipe.unet = base_unet.to(torch.float32)
        pipe.save_pretrained(directory, safe_serialization=True)


def policy_class(model: DictConfig) -> type[nn.Module]:
    """The policy class of a model config's family: `model.policy._target_` (a user's model config that
    names none gets Stable Diffusion 1.x's, this module's Policy)."""
    target = OmegaConf.select(model, "policy._target_")
    if target is None:
        return Policy
    module_name, _, name = str(target).rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name) if module_name else None
    except (ImportError, AttributeError):
        found = None
    if not isinstance(found, type):
        raise ConfigError(
            f"model.policy._target_={target}: no such class; name a policy class importable from here, "
            "e.g. rlft.policy.Policy for Stable Diffusion 1.x"
        )
    return found

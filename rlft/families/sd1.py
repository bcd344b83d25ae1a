"""Stable Diffusion 1.x (and the offline tiny and toy models of its shape): a UNet on CLIP hidden
states, stepped by the DDIM kernel (docs/algorithms.md#ddim-transition-kernel).

One object owns text encoding, classifier-free guidance, the log-prob step, decoding, LoRA and
export, so that sampling and training evaluate the policy through the same code path.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from omegaconf import DictConfig, OmegaConf
from peft.utils import get_peft_model_state_dict
from torch import nn

from rlft.ddim import denoising_target
from rlft.families.base import DiffusionPolicy, levels_at
from rlft.kernels.base import Transition
from rlft.kernels.choice import DDIMKernel, Kernel
from rlft.models import Components, sd_pipeline
from rlft.streams import RandomStream


def ddim_levels(scheduler, num_steps: int) -> torch.Tensor:
    """The DDIM chain's T + 1 timesteps (int64): t_0 > ... > t_{T-1} as `set_timesteps` spaces them,
    then the last step's target t_{T-1} - 1000 / T (below 0: the chain's end, alpha = final_alpha)."""
    fresh = copy.deepcopy(scheduler)  # the policy's own scheduler keeps no per-run state
    fresh.set_timesteps(num_steps)
    timesteps = fresh.timesteps.long()
    stride = fresh.config.num_train_timesteps // num_steps
    return torch.cat([timesteps, timesteps[-1:] - stride])


def window_timesteps(num_train_timesteps: int, window: tuple[float, float]) -> range:
    """The training timesteps that a window of the sampling chain (fractions from its first,
    pure-noise step) covers: its noise levels, t from T(1 - stop) to T(1 - start). The whole chain
    [0, 1] is every t, as the reference's RWR draws them."""
    start = round(num_train_timesteps * (1 - window[1]))
    stop = max(round(num_train_timesteps * (1 - window[0])), start + 1)
    return range(start, stop)


class SD1Policy(DiffusionPolicy):
    denoiser_name = "unet"
    parametrisation = "ddim"
    family = "Stable Diffusion 1.x"

    def __init__(
        self,
        components: Components,
        lora: DictConfig | dict | None,
        frozen_dtype: str = "float32",
        keep_reference: bool = False,
        compile_unet: bool | dict = False,
        channels_last: bool = False,
        gradient_checkpointing: bool = False,
        kernel: Kernel | None = None,
    ):
        """`keep_reference`: keep the base model as a frozen reference policy (KL regularization).
        With LoRA that is the same UNet with its adapters disabled; with full fine-tuning, a frozen
        copy of the UNet made before training. `kernel`: the DDIM kernel (eta), DDIMKernel(1.0) by default.

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
        self.kernel = self.check_kernel(DDIMKernel() if kernel is None else kernel)
        self.initial_noise_scale = float(self.scheduler.init_noise_sigma)
        if lora is not None:
            lora = OmegaConf.to_container(OmegaConf.create(lora), resolve=True)
        self.setup_weights([self.vae, self.text_encoder], lora, frozen_dtype, keep_reference)
        self.channels_last = channels_last
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()  # diffusers: active whenever grad is enabled
        if compile_unet:
            self.unet.compile(**(compile_unet if isinstance(compile_unet, dict) else {}))
        self.register_buffer("negative_embedding", self.encode_prompts([""]), persistent=False)

    @property
    def reference_unet(self) -> nn.Module | None:
        return self.reference_denoiser

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

    # -- the schedule and the policy's action ---------------------------------------------------
    def schedule(self, num_steps: int) -> torch.Tensor:
        return ddim_levels(self.scheduler, num_steps)

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

    def noise_prediction(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        guidance_scale: float,
        reference: bool = False,
    ) -> torch.Tensor:
        """The guided model output that the kernel steps, in the UNet's dtype, from the trained
        weights or (`reference=True`) the frozen base model's."""
        with self.weights(reference) as unet:
            unet_dtype = next(unet.parameters()).dtype
            return self.predict_noise(
                latents.to(unet_dtype), timesteps, prompt_embeds.to(unet_dtype), guidance_scale, unet
            )

    def transition(
        self,
        latents: torch.Tensor,
        step_index: torch.Tensor,
        schedule: torch.Tensor,
        conditioning: torch.Tensor,
        guidance_scale: float,
        *,
        noise: torch.Tensor | None = None,
        next_latents: torch.Tensor | None = None,
        reference: bool = False,
    ) -> Transition:
        timesteps, prev_timesteps = levels_at(schedule, step_index, len(latents))
        out = self.noise_prediction(latents, timesteps, conditioning, guidance_scale, reference)
        return self.kernel(self.scheduler, out, timesteps, prev_timesteps, latents, noise, next_latents)

    # -- the family's denoising loss --------------------------------------------------------------
    def denoising_loss(
        self,
        latents: torch.Tensor,
        conditioning: torch.Tensor,
        guidance_scale: float,
        stream: RandomStream,
        window: tuple[float, float],
    ) -> torch.Tensor:
        """mean over (C, H, W) of (target - prediction)^2 with t ~ U over the window's timesteps and
        the DDPM forward process x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps; the target is eps, or
        v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 for a v-prediction model (docs/algorithms.md#the-weighted-denoising-loss)."""
        scheduler = self.scheduler
        drawn = window_timesteps(scheduler.config.num_train_timesteps, window)
        timesteps = stream.integers(drawn.start, drawn.stop, (len(latents),), latents.device)
        noise = stream.normal(latents.shape, latents.device)
        noisy = scheduler.add_noise(latents.float(), noise, timesteps)
        predicted = self.predict_noise(noisy, timesteps, conditioning, guidance_scale).float()
        target = denoising_target(scheduler, latents.float(), noise, timesteps)
        return ((predicted - target) ** 2).mean(dim=tuple(range(1, noise.ndim)))

    # -- export -----------------------------------------------------------------------------
    def pipeline(self) -> StableDiffusionPipeline:
        return sd_pipeline(self)

    def save_lora(self, directory: Path) -> None:
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)

"""The policy seam: what every model family's policy offers the sampler and the algorithms
(docs/algorithms.md#the-policy-seam).

A family (Stable Diffusion 1.x, SD3, ...) is a subclass of `DiffusionPolicy` that names its
denoising network and implements:

- `encode_prompts(prompts)`: the text conditioning, batch-indexable (a tensor of hidden states, or a
  TextConditioning with pooled embeddings);
- `schedule(num_steps)`: the chain's T + 1 levels (DDIM timesteps, or flow noise levels), stored
  with every trajectory so that a stored step means the same thing whatever the scheduler did since;
- `transition(...)`: one step of the configured kernel at per-sample step indices into a schedule,
  drawing an action or scoring a stored one, from the trained or the reference weights;
- `denoising_loss(...)`: the family's own regression loss (RWR);
- `decode`, `pipeline`, `save_lora` (export).

What is the same for every family lives here: frozen weights in `frozen_dtype`, LoRA adapters with
float32 trainable weights, the reference policy (adapters disabled, or a frozen copy), trainable
parameters, the kernel's compatibility check and the export layout.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch
from peft import LoraConfig
from torch import nn

from rlft.errors import ConfigError
from rlft.families.conditioning import TextConditioning
from rlft.kernels.base import Transition
from rlft.kernels.choice import Kernel
from rlft.streams import RandomStream

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
Conditioning = torch.Tensor | TextConditioning


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


def levels_at(schedule: torch.Tensor, step_index: int | torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's level j and level j + 1 of its schedule ((T + 1,) or (B, T + 1)), for step j =
    `step_index` (an int or (B,)): (B,) tensors. A gather, so that on XLA the step index is a graph
    input and every step runs one compiled graph."""
    levels = schedule.expand(batch, -1) if schedule.ndim == 1 else schedule
    index = torch.as_tensor(step_index, device=levels.device).reshape(-1, 1).expand(batch, 1)
    return levels.gather(1, index).squeeze(1), levels.gather(1, index + 1).squeeze(1)


def concatenate(parts: list[Conditioning]) -> Conditioning:
    """Batches of conditioning (tensors or TextConditionings) joined along the batch."""
    return TextConditioning.cat(parts) if isinstance(parts[0], TextConditioning) else torch.cat(parts)


class DiffusionPolicy(nn.Module):
    """A text-to-image denoiser as a policy whose sampler steps are its actions."""

    #: the attribute holding the trained network ("unet", "transformer")
    denoiser_name: ClassVar[str]
    #: the kernels' parametrisation this family's network output feeds ("ddim" or "flow")
    parametrisation: ClassVar[str]
    #: the family's name in messages
    family: ClassVar[str]
    #: the scale of the initial noise x_T ~ N(0, scale^2 I)
    initial_noise_scale: float = 1.0

    def setup_weights(
        self, frozen: list[nn.Module | None], lora: dict | None, frozen_dtype: str, keep_reference: bool
    ) -> None:
        """Freeze `frozen` (encoders, VAE) in `frozen_dtype`; add LoRA adapters to the denoiser (its
        base weights frozen in `frozen_dtype`, the adapters' float32) or train all of it; with
        `keep_reference` and no adapters, keep a frozen copy as the reference policy."""
        self.lora_config = None if lora is None else dict(lora)
        dtype = DTYPES[frozen_dtype]
        for module in frozen:
            if module is not None:
                module.requires_grad_(False).to(dtype).eval()
        denoiser = self.denoiser
        self.reference_denoiser = None
        if keep_reference and self.lora_config is None:
            self.reference_denoiser = copy.deepcopy(denoiser).requires_grad_(False).to(dtype).eval()
        if self.lora_config is not None:
            denoiser.requires_grad_(False).to(dtype)
            denoiser.add_adapter(LoraConfig(**self.lora_config))
            for param in denoiser.parameters():
                if param.requires_grad:  # trainable weights stay float32 whatever the frozen dtype
                    param.data = param.data.float()
        denoiser.eval()  # no dropout: sampling and training evaluate the same policy

    @classmethod
    def check_kernel(cls, kernel: Kernel) -> Kernel:
        """`kernel`, if this family's network output is what it steps; else one ConfigError line."""
        if getattr(kernel, "parametrisation", None) != cls.parametrisation:
            raise ConfigError(
                f"sample.kernel={type(kernel).__name__}: {cls.family} steps with a {cls.parametrisation} "
                f"kernel: kernel={' or kernel='.join(KERNELS_OF[cls.parametrisation])} (conf/kernel/)"
            )
        return kernel

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def weights(self, reference: bool):
        """Context: the denoiser to evaluate, trained or (`reference`) the base model's."""
        return network_weights(self.denoiser, self.reference_denoiser, self.lora_config is not None, reference)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        config = self.denoiser.config
        return (config.in_channels, config.sample_size, config.sample_size)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in [0, 1], float32 (B, 3, H, W): unscale (and unshift, for VAEs with a
        shift factor, SD3's), then the VAE."""
        config = self.vae.config
        unscaled = latents.to(self.vae.dtype) / config.scaling_factor
        if config.get("shift_factor") is not None:
            unscaled = unscaled + config.shift_factor
        images = self.vae.decode(unscaled).sample.float()
        return (images / 2 + 0.5).clamp(0, 1)

    # -- what each family implements --------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def schedule(self, num_steps: int) -> torch.Tensor:
        """The T + 1 levels of a `num_steps`-step chain; step j goes from level j to level j + 1."""
        raise NotImplementedError

    def transition(
        self,
        latents: torch.Tensor,
        step_index: torch.Tensor,
        schedule: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
        *,
        noise: torch.Tensor | None = None,
        next_latents: torch.Tensor | None = None,
        reference: bool = False,
    ) -> Transition:
        """Step j = `step_index` (B,) of `schedule` ((B, T + 1) or (T + 1,)) with the configured kernel:
        draws the action with `noise` or scores the stored `next_latents`."""
        raise NotImplementedError

    def denoising_loss(
        self,
        latents: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
        stream: RandomStream,
        window: tuple[float, float],
    ) -> torch.Tensor:
        """The family's regression loss per sample (B,) on clean `latents`, at noise levels drawn from
        `window` (the part of the chain, as fractions from its first, noisiest step)."""
        raise NotImplementedError

    def pipeline(self):
        """The diffusers pipeline of this policy's components (for saving)."""
        raise NotImplementedError

    def save_lora(self, directory: Path) -> None:
        """Write the adapters in the family's diffusers LoRA format."""
        raise NotImplementedError

    # -- export -----------------------------------------------------------------------------------
    def export(self, directory: str | Path) -> Path:
        """Write the trained weights in diffusers' format; returns the directory.

        LoRA: `lora/pytorch_lora_weights.safetensors` (load with the pipeline's `load_lora_weights`),
        and for a model built offline (no hub id to load the base from) the base pipeline in `base/`.
        Full fine-tuning: the whole pipeline with the trained denoiser in `pipeline/`.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.lora_config is None:
            self.pipeline().save_pretrained(directory / "pipeline", safe_serialization=True)
            return directory
        self.save_lora(directory / "lora")
        if self.source is None:
            self.save_base_pipeline(directory / "base")
        (directory / "BASE_MODEL.txt").write_text((self.source or str(directory / "base")) + "\n")
        return directory

    def save_base_pipeline(self, directory: Path) -> None:
        """Save the pipeline without the adapters (a fresh denoiser with the base weights)."""
        denoiser = self.denoiser
        base = type(denoiser).from_config(denoiser.config)
        state = {k.replace(".base_layer", ""): v for k, v in denoiser.state_dict().items() if "lora_" not in k}
        base.load_state_dict(state)
        pipe = self.pipeline()
        setattr(pipe, self.denoiser_name, base.to(torch.float32))  # (diffusers re-registers the component)
        pipe.save_pretrained(directory, safe_serialization=True)


# The kernels of each parametrisation, by conf/kernel/ option (for messages).
KERNELS_OF = {"ddim": ("ddim",), "flow": ("flow_grpo", "dance_grpo", "cps", "euler")}

"""`python -m rlft.pretrain [overrides]`: pretrain a tiny text-to-image model on the toy world.
(`--config-name pretrain_flow`: the flow-matching toy model of the compositional world, rlft/pretrain_flow.py.)

Two stages on images drawn on the fly from `ToyWorld` (an endless, seeded stream): an AutoencoderKL
learns to reconstruct them (32x32 -> 8x8x4 latents), then a UNet learns to denoise their latents
(v-prediction on a zero-terminal-SNR schedule, conf `scheduler`) conditioned on the captions'
hidden states from a small CLIP text encoder (one token per word; left at its random initialisation
unless `unet.train_text_encoder`; 10% of captions dropped for classifier-free guidance). Each stage reports
the exact reader's accuracy (rlft/toy/world.py): of the reconstructions, then of DDIM samples
(samples.png shows the first 32). The result is a diffusers pipeline directory, which `model=toy`
loads.

The training loops are written here rather than with Lightning: two short supervised loops with
no resume, logging or distribution needs, whose whole state is the saved pipeline.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlft.config import CONFIG_DIR
from rlft.ddim import denoising_target, make_scheduler
from rlft.kernels import DDIMKernel
from rlft.models import build_offline
from rlft.policy import Policy
from rlft.rewards import RewardRunner
from rlft.rewards.base import to_uint8
from rlft.showcase import showcase
from rlft.toy.prompts import ToyPrompts, toy_vocabulary
from rlft.toy.rewards import ToyReward
from rlft.toy.world import Scene, ToyWorld, draw, read_scene

log = logging.getLogger("rlft.pretrain")


def world_batch(world: ToyWorld, size: int, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Images in [-1, 1] (B, 3, H, W) and their captions."""
    scenes = world.scenes(size)
    return scene_images(scenes, resolution), [scene.caption for scene in scenes]


def scene_images(scenes: list[Scene], resolution: int) -> torch.Tensor:
    """The scenes drawn, as the VAE takes them: float images in [-1, 1] (B, 3, H, W)."""
    pixels = np.stack([draw(scene, resolution) for scene in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def reconstruction_accuracy(vae, world: ToyWorld, count: int, resolution: int) -> float:
    """Fraction of reconstructions whose shape, colour and background read back right."""
    images, _ = world_batch(world, count, resolution)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(images).latent_dist.mode()).sample
    pairs = zip(to_uint8((decoded + 1) / 2), to_uint8((images + 1) / 2), strict=True)
    return float(np.mean([read_scene(decoded_pixels) == read_scene(pixels) for decoded_pixels, pixels in pairs]))


def train_vae(vae, cfg: DictConfig, world: ToyWorld) -> None:
    settings = cfg.vae
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate)
    # Warm-up then cosine decay: at a constant 1e-3 the loss spiked late and only 40% of the
    # reconstructions read back right after 1000 steps; this reaches ~98% in 800.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    vae.train()
    for step in range(1, settings.steps + 1):
        images, _ = world_batch(world, settings.batch_size, cfg.resolution)
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample()
        if settings.latent_noise:  # the decoder learns to draw from latents a little off, as the UNet's are
            latents = perturbed(latents, settings.latent_noise)
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, images) + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.log_every == 0 or step == settings.steps:
            log.info("vae step %d: loss %.5f", step, loss.item())
    vae.eval()


def perturbed(latents: torch.Tensor, fraction: float) -> torch.Tensor:
    """`latents` plus Gaussian noise of `fraction` of their standard deviation: a fraction, so that
    the encoder cannot make the noise negligible by scaling its latents up."""
    return latents + fraction * latents.detach().std() * torch.randn_like(latents)


@torch.no_grad()
def latent_scale(vae, world: ToyWorld, resolution: int) -> float:
    """1 / std of the latents (Stable Diffusion's scaling_factor convention: unit-variance latents)."""
    images, _ = world_batch(world, 256, resolution)
    return float(1.0 / vae.encode(images).latent_dist.mode().std())


def train_unet(policy: Policy, cfg: DictConfig, world: ToyWorld, output_dir: Path) -> None:
    """Denoising training (the scheduler's prediction type) of the UNet, and of the text encoder
    with `train_text_encoder`;
    every `eval_every` steps, the reader's accuracy of fresh samples and (with `snapshots`) the
    pipeline as it stands."""
    settings = cfg.unet
    unet, vae, scheduler, text_encoder = policy.unet, policy.vae, policy.scheduler, policy.text_encoder
    # Frozen random layers over bytes left the prompts barely followed (background colour right in
    # 20% of samples after 4000 steps): words must then be recognised from characters. Over the
    # word tokenizer they suffice (the shipped model), the UNet learning to read them.
    text_encoder.requires_grad_(settings.train_text_encoder)
    parameters = [*unet.parameters(), *(text_encoder.parameters() if settings.train_text_encoder else [])]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate)
    # Warm-up then cosine decay: at a constant 5e-4 the samples' accuracy stalled after ~2500 steps
    # (alignment 10-18% over 128 samples, wandering with the noise of the last updates).
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=settings.warmup_fraction
    )
    rng = random.Random(cfg.seed)
    unet.train()
    text_encoder.train(settings.train_text_encoder)
    for step in range(1, settings.steps + 1):
        images, batch_captions = world_batch(world, settings.batch_size, cfg.resolution)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
        captions = ["" if rng.random() < settings.caption_dropout else c for c in batch_captions]
        with torch.set_grad_enabled(settings.train_text_encoder):
            conditions = text_encoder(policy.tokenize(captions))[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = denoising_target(scheduler, latents, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, conditions).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.log_every == 0 or step == settings.steps:
            log.info("unet step %d: loss %.5f", step, loss.item())
        if settings.eval_every and step % settings.eval_every == 0 and step < settings.steps:
            finish_training(policy)
            scores = sample_accuracy(policy, cfg, samples=settings.eval_samples)  # (in its own RNG streams)
            log.info("unet step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
            if settings.snapshots:
                save_pipeline(policy, output_dir / f"pipeline_step{step}", cfg.save_dtype)
            unet.train()
            text_encoder.train(settings.train_text_encoder)
    finish_training(policy)


def finish_training(policy: Policy) -> None:
    """Evaluation mode, and the unconditional embedding of the (possibly trained) text encoder."""
    policy.unet.eval()
    policy.text_encoder.eval()
    policy.negative_embedding = policy.encode_prompts([""])


def save_pipeline(policy: Policy, directory: Path, dtype: str) -> None:
    """The pipeline in diffusers' format, its weights stored in `dtype` (float16 halves the files;
    model=toy loads them back in float32)."""
    pipeline = copy.deepcopy(policy.pipeline())  # a copy: training goes on in float32
    pipeline.to(getattr(torch, dtype))
    pipeline.save_pretrained(directory, safe_serialization=True)


def sample_accuracy(
    policy: Policy, cfg: DictConfig, samples: int | None = None, grid_path: Path | None = None
) -> dict[str, float]:
    """Mean toy rewards of DDIM samples of the toy prompts at conf `evaluation`'s sampler settings (a
    showcase of `samples` images, seeded by the run's seed; the first 32 saved to `grid_path`)."""
    settings = cfg.evaluation
    runner = RewardRunner({aspect: ToyReward(aspect) for aspect in ("color", "shape", "alignment")})
    shown = OmegaConf.create(
        {"samples": samples or settings.samples, "batch_size": settings.batch_size, "seed": cfg.seed}
    )
    shown.grid = 32 if grid_path else 0
    scores = showcase(policy, ToyPrompts(), runner, shown, settings, grid_path or Path())
    runner.close()
    return {f"sample_{name.removeprefix('eval_').removesuffix('_mean')}": value for name, value in scores.items()}


def pretrain(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    components = build_offline(**cfg.model, vocabulary=toy_vocabulary() if cfg.tokenizer == "words" else None)
    components.scheduler = make_scheduler(**cfg.scheduler)
    world = ToyWorld(cfg.seed, cfg.world.min_size, cfg.world.max_size)
    start = time.perf_counter()
    train_vae(components.vae, cfg, world)
    components.vae.register_to_config(scaling_factor=latent_scale(components.vae, world, cfg.resolution))
    report = {"reconstruction_accuracy": reconstruction_accuracy(components.vae, world, 256, cfg.resolution)}
    log.info("vae: %.1f%% of reconstructions read back right", 100 * report["reconstruction_accuracy"])
    policy = Policy(components, lora=None, kernel=DDIMKernel(eta=cfg.evaluation.eta))
    train_unet(policy, cfg, world, output_dir)
    report.update(sample_accuracy(policy, cfg, grid_path=output_dir / "samples.png"))
    report["seconds"] = time.perf_counter() - start
    log.info("samples: %s", ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
    pipeline_dir = output_dir / "pipeline"
    save_pipeline(policy, pipeline_dir, cfg.save_dtype)
    (output_dir / "pretrain_report.json").write_text(json.dumps(report, indent=1))
    log.info("saved the pipeline to %s (load it with model=toy model.path=%s)", pipeline_dir, pipeline_dir)
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pretrain")
def main(cfg: DictConfig) -> float:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("family") == "sd3":  # --config-name pretrain_flow: the toy flow model
        from rlft.pretrain_flow import pretrain_flow

        return pretrain_flow(cfg, output_dir)["samples"]["overall"]["accuracy"]
    return pretrain(cfg, output_dir)["sample_alignment"]


if __name__ == "__main__":
    main()

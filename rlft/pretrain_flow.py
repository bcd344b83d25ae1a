"""`python -m rlft.pretrain --config-name pretrain_flow`: pretrain the toy flow model (model=toy_flow) on
the compositional world (rlft/toy/compositional.py).

Two parts on scenes drawn on the fly (an endless, seeded stream over GenEval's six task kinds): an
AutoencoderKL learns to reconstruct them (32x32 -> 16x16x4 latents, optionally decoding from
slightly noised latents; its shift and scaling factors are then set to the latents' mean and 1 / std,
SD3's convention), then the SD3 transformer learns rectified flow on their latents (the family's own
loss, SD3Policy.denoising_loss, at uniform or SD3's logit-normal noise levels) conditioned on two
small CLIP text encoders over the captions' words (trained with it, or left at their random
initialisation; 10% of captions dropped so that guidance works), an exponential moving average of
the weights being what is evaluated and saved. `init_from` skips the VAE and trains a saved
pipeline's transformer on (the shipped base is two such runs). Each part reports the exact reader's
scores: of the reconstructions, then per task kind of Euler samples (toy_geneval's evaluation). The
result is a diffusers SD3 pipeline directory, which model=toy_flow loads.

Written as a plain loop, as rlft/pretrain.py: a short supervised job whose whole state is the pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rlft.errors import ConfigError
from rlft.families.sd3 import SD3Policy
from rlft.kernels.choice import EulerKernel
from rlft.pretrain import perturbed
from rlft.streams import RandomStream
from rlft.toy.compositional import KINDS, CompositionalWorld, read_batch, render, truth
from rlft.toy.flow import build_toy_flow, load_toy_flow

log = logging.getLogger("rlft.pretrain")


class SceneStream:
    """Captions and rendered scenes of the given task kinds, drawn uniformly over the kinds."""

    def __init__(self, seed: int, kinds: list[str], resolution: int):
        self.world = CompositionalWorld(seed)
        self.rng = np.random.default_rng(seed + 1)
        self.kinds, self.resolution = list(kinds), resolution

    def batch(self, size: int) -> tuple[torch.Tensor, list[str], list]:
        """Images in [-1, 1] (B, 3, H, W), their captions and scenes."""
        drawn = [self.world.sample(self.kinds[self.rng.integers(len(self.kinds))]) for _ in range(size)]
        pixels = np.stack([render(scene, self.resolution) for _, _, scene in drawn])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
        return images, [caption for caption, _, _ in drawn], [scene for _, _, scene in drawn]


def train_vae(vae, settings: DictConfig, scenes: SceneStream) -> None:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    vae.train()
    begin = time.perf_counter()
    for step in range(1, settings.steps + 1):
        images, _, _ = scenes.batch(settings.batch_size)
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample()
        if settings.latent_noise:  # the decoder learns to draw crisp shapes from latents a little off
            latents = perturbed(latents, settings.latent_noise)
        reconstruction = vae.decode(latents).sample
        loss = torch.nn.functional.mse_loss(reconstruction, images) + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.log_every == 0 or step == settings.steps:
            log.info("vae step %d: loss %.5f (%.0f s)", step, loss.item(), time.perf_counter() - begin)
    vae.eval()


@torch.no_grad()
def set_latent_statistics(vae, scenes: SceneStream) -> None:
    """SD3's convention: z = (x - shift) * scale has zero mean and unit variance over the data."""
    images, _, _ = scenes.batch(256)
    latents = vae.encode(images).latent_dist.mode()
    vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1.0 / latents.std()))


@torch.no_grad()
def reconstruction_accuracy(vae, scenes: SceneStream, count: int) -> float:
    """Fraction of reconstructions in which the reader finds exactly the scene's objects (shape, colour)."""
    images, _, drawn = scenes.batch(count)
    decoded = vae.decode(vae.encode(images).latent_dist.mode()).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    right = [
        sorted((o.shape, o.color) for o in found) == sorted((o.shape, o.color) for o in truth(scene))
        for found, scene in zip(read_batch(pixels), drawn, strict=True)
    ]
    return float(np.mean(right))


def encode_latents(policy: SD3Policy, images: torch.Tensor) -> torch.Tensor:
    config = policy.vae.config
    with torch.no_grad():
        return (policy.vae.encode(images).latent_dist.mode() - config.shift_factor) * config.scaling_factor


def train_transformer(policy: SD3Policy, cfg: DictConfig, scenes: SceneStream, output_dir: Path) -> None:
    settings = cfg.transformer
    encoders = [policy.text_encoder, policy.text_encoder_2]
    for encoder in encoders:
        encoder.requires_grad_(settings.train_text_encoder)
    parameters = [*policy.transformer.parameters()]
    if settings.train_text_encoder:
        parameters += [p for encoder in encoders for p in encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=settings.warmup_fraction
    )
    trained = torch.nn.ModuleList([policy.transformer, *(encoders if settings.train_text_encoder else [])])
    average = None
    if settings.ema_decay:  # an exponential moving average of the weights: what is evaluated and saved
        average = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True)
    stream, rng = RandomStream(cfg.seed), random.Random(cfg.seed)
    policy.transformer.train()
    start = time.perf_counter()
    for step in range(1, settings.steps + 1):
        images, captions, _ = scenes.batch(settings.batch_size)
        latents = encode_latents(policy, images)
        captions = ["" if rng.random() < settings.caption_dropout else c for c in captions]
        with torch.set_grad_enabled(settings.train_text_encoder):
            conditioning = policy.encode_prompts.__wrapped__(policy, captions)
        levels = training_levels(settings, stream, len(latents))
        loss = policy.denoising_loss(latents, conditioning, 1.0, stream, (0.0, 1.0), levels=levels).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if average is not None:
            average.update_parameters(trained)
        if step % settings.log_every == 0 or step == settings.steps:
            log.info("transformer step %d: loss %.5f (%.0f s)", step, loss.item(), time.perf_counter() - start)
        if settings.eval_every and step % settings.eval_every == 0 and step < settings.steps:
            with averaged_weights(trained, average):
                refresh_negative(policy)  # guidance's empty-caption branch, from the encoders as they are now
                for guidance in evaluation_guidances(cfg):
                    scores = evaluate(policy, cfg, per_kind=settings.eval_per_kind, guidance_scale=guidance)
                    log.info("transformer step %d, guidance %g: %s", step, guidance, _summary(scores))
                if settings.snapshots:
                    save_pipeline(policy, output_dir / f"pipeline_step{step}", cfg.save_dtype)
            policy.transformer.train()
    if average is not None:
        trained.load_state_dict(average.module.state_dict())
    policy.transformer.eval()
    for encoder in encoders:
        encoder.requires_grad_(False).eval()
    refresh_negative(policy)


@contextlib.contextmanager
def averaged_weights(trained: torch.nn.Module, average: AveragedModel | None):
    """`trained` holds the moving average's weights inside the block and its own again after it."""
    if average is None:
        yield
        return
    own = copy.deepcopy(trained.state_dict())
    trained.load_state_dict(average.module.state_dict())
    try:
        yield
    finally:
        trained.load_state_dict(own)


def training_levels(settings: DictConfig, stream: RandomStream, count: int) -> torch.Tensor | None:
    """The noise levels u in (0, 1) to train at: None for the scheduler's uniform draw, or SD3's
    logit-normal draw u = sigmoid(m + s n), n ~ N(0, 1), which puts the training where the image's
    layout is decided (mid-chain) rather than at the ends (Esser et al. 2024, section 3.1)."""
    check_timesteps(settings)
    if settings.timesteps == "uniform":
        return None
    return torch.sigmoid(settings.logit_mean + settings.logit_std * stream.normal((count,)))


def check_timesteps(settings: DictConfig) -> None:
    if settings.timesteps not in ("uniform", "logit_normal"):
        raise ConfigError(
            f"transformer.timesteps={settings.timesteps!r} is not a timestep draw; use uniform or logit_normal"
        )


def evaluation_guidances(cfg: DictConfig) -> list[float]:
    """evaluation.guidance_scale first (the report's), then evaluation.also_guidance."""
    return [float(cfg.evaluation.guidance_scale), *map(float, cfg.evaluation.get("also_guidance", []))]


def refresh_negative(policy: SD3Policy) -> None:
    """The empty caption's conditioning again (guidance's branch), after the encoders trained."""
    negative = policy.encode_prompts([""])
    policy.negative_hidden_states, policy.negative_pooled = negative.hidden_states, negative.pooled


def evaluate(
    policy: SD3Policy,
    cfg: DictConfig,
    per_kind: int | None = None,
    grid: Path | None = None,
    guidance_scale: float | None = None,
) -> dict:
    """toy_geneval's per-kind scores (rlft/toy/geneval.py) of Euler (ODE) samples at conf `evaluation`'s
    settings: {"kinds": {kind: {"accuracy", "se", ...}}, "overall": {...}} (the per-prompt scores left out)."""
    from rlft.toy.geneval import evaluate_geneval

    settings = cfg.evaluation
    was_training = policy.transformer.training
    policy.transformer.eval()
    try:
        result = evaluate_geneval(
            policy,
            per_kind=per_kind or settings.per_kind,
            seeds_per_prompt=settings.seeds_per_prompt,
            num_steps=settings.num_steps,
            guidance_scale=settings.guidance_scale if guidance_scale is None else guidance_scale,
            batch_size=settings.batch_size,
            seed=cfg.seed,
            kernel=EulerKernel(),
            grid=36 if grid else 0,
            grid_path=grid,
        )
    finally:
        policy.transformer.train(was_training)
    return {key: result[key] for key in ("kinds", "overall", "settings")}


def _summary(scores: dict) -> str:
    kinds = ", ".join(f"{kind} {scores['kinds'][kind]['accuracy']:.3f}" for kind in KINDS)
    return f"{kinds}; overall {scores['overall']['accuracy']:.3f}"


def save_pipeline(policy: SD3Policy, directory: Path, dtype: str) -> None:
    """The pipeline in diffusers' format, its weights stored in `dtype` (model=toy_flow loads them in float32)."""
    pipeline = copy.deepcopy(policy.pipeline())
    pipeline.to(getattr(torch, dtype))
    pipeline.save_pretrained(directory, safe_serialization=True)


def pretrain_flow(cfg: DictConfig, output_dir: Path) -> dict:
    check_timesteps(cfg.transformer)  # before the VAE's minutes of training, not after them
    torch.manual_seed(cfg.seed)
    scenes = SceneStream(cfg.seed, list(cfg.kinds), cfg.resolution)
    start = time.perf_counter()
    if cfg.get("init_from"):  # a second stage: the transformer trains on from a saved pipeline, its VAE kept
        components = load_toy_flow(str(cfg.init_from))
        log.info("continuing from %s (its VAE and latent statistics kept)", cfg.init_from)
    else:
        components = build_toy_flow(**OmegaConf.to_container(cfg.model, resolve=True))
        train_vae(components.vae, cfg.vae, scenes)
        set_latent_statistics(components.vae, scenes)
    report: dict = {"reconstruction_accuracy": reconstruction_accuracy(components.vae, scenes, 512)}
    log.info("vae: %.1f%% of reconstructions read back right", 100 * report["reconstruction_accuracy"])
    policy = SD3Policy(components, lora=None, max_sequence_length=0, kernel=EulerKernel())
    train_transformer(policy, cfg, scenes, output_dir)
    report["seconds"] = time.perf_counter() - start
    pipeline_dir = output_dir / "pipeline"
    save_pipeline(policy, pipeline_dir, cfg.save_dtype)  # saved before the evaluation: nothing is lost to it
    report["samples"] = evaluate(policy, cfg, grid=output_dir / "samples.png")
    log.info("samples: %s", _summary(report["samples"]))
    for guidance in evaluation_guidances(cfg)[1:]:
        report[f"samples_guidance_{guidance:g}"] = scores = evaluate(policy, cfg, guidance_scale=guidance)
        log.info("samples at guidance %g: %s", guidance, _summary(scores))
    (output_dir / "pretrain_report.json").write_text(json.dumps(report, indent=1))
    log.info("saved the pipeline to %s (load it with model=toy_flow model.path=%s)", pipeline_dir, pipeline_dir)
    return report

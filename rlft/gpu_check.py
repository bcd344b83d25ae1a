"""`python -m rlft.gpu_check [--tiny]` (`make gpu-check`): the one-GPU run, prepared.

On one CUDA GPU, with nothing downloaded and in under 8 minutes, it builds a pipeline with Stable
Diffusion 1.5's component shapes and random weights (its UNet2DConditionModel, AutoencoderKL and
CLIP ViT-L/14 text encoder configs, written out below; the byte-level tokenizer of rlft.models
with 77 tokens), and for TDPO-R's critic a CLIP ViT-L/14 image tower, also random. Both are saved
with save_pretrained to a temporary directory and loaded back by rlft's own loaders (model=sd15
model.path=..., model.image_embedder.path=...). Then, through rlft.train.train with configs
composed by Hydra, it runs one DDPO epoch (experiment=ddpo_aesthetic) and one TDPO-R epoch
(experiment=tdpo_aesthetic) at 512 px in bf16 (hardware=gpu: bf16-mixed, frozen weights in
bfloat16) with LoRA r4 on the attention projections (conf/model/sd15.yaml), at the presets' sample
and train batch sizes and 50 sampler steps, on the exact JPEG-compressibility reward. For each it
prints images per second for sampling and for the whole RL step, peak GPU memory
(torch.cuda.max_memory_allocated), epoch / floor as `make bench` defines it (rlft.bench's
EpochTimer and compute_floor, measured right after the epoch), and checks that the importance
ratio is 1 before the first update: on the first micro-step (the first minibatch) and on every
other micro-step before the policy optimizer's first step; exit status 1 when it is not.

The presets' 4 sample batches per process fill 8 GPUs' 256 samples per epoch; here the default is
2 (16 samples, `--batches`), so that the two epochs and their floors (which repeat the epochs' UNet
and VAE work) fit the 8 minutes by an estimate from published SD 1.5 speeds, not a measurement; the
per-image rates do not depend on it. Each figure comes from one epoch, so the DDPO one includes
CUDA's warm-up. As in `make bench`, TDPO-R's per-state decodes and critic encodes are outside its
floor, so its epoch / floor reads higher than DDPO's.

The second check (`--checks sd35m`) is a full Flow-GRPO step on Stable Diffusion 3.5 Medium's
transformer: SD3Transformer2DModel with SD3.5-M's config (24 MMDiT blocks, dual attention in blocks
0-12, RMS q/k norm; 2.24 B parameters) and its 16-channel VAE, random weights, bf16, 512 px
(64x64 latents), LoRA r32 alpha 64 on Flow-GRPO's targets, one epoch of algorithm=grpo through
rlft.train.train at model=sd3_5_medium's own sizes (conf/model_defaults/sd3.yaml): one prompt's
group of 24 images sampled in the model's batches with 10 steps of Flow-GRPO's SDE and guidance 4.5
(each call on the [unconditional; conditional] batch), then the first 9 steps of each chain trained
forward and backward, with guidance, with the clipped loss, in the model's minibatches and
accumulation. The
transformer is built here (its config written out below); the two CLIP text encoders are small
random stand-ins with SD3.5's projection widths (pooled 768 + 1280 = 2048) and T5 is left out
(zeros in its place, as diffusers does without it), so the transformer sees SD3.5-M's conditioning
shapes exactly (77 + 256 tokens of width 4096) while the text encoders' own cost is not SD3.5's. It
prints images per second for sampling and for the whole step, the floor ratios, peak memory and
the importance-ratio check. Its time is estimated at about 3 minutes on an H100-class GPU (about
1.2e16 FLOPs per epoch: 480 guided sampling rows and 432 trained rows of 2.24 B parameters over
1024 + 333 tokens, the epoch and its floor at about 400 TFLOP/s, plus building the weights on the
CPU): an estimate, not a measurement.

`--tiny` runs the same paths on the CPU on tiny shapes (SD 1.x: conf/model/tiny.yaml; SD3.5: the
same transformer structure at toy widths) with few sampler steps, in bf16-mixed as on the GPU;
tests/test_gpu_check.py runs them. Without CUDA and without --tiny the script says so in one line
and exits with status 2.

The CUDA paths have never met hardware in this project (neither the SD 1.5 nor the SD3.5-M check):
they were written and tested on CPUs only (the --tiny paths), so their first GPU run is also the
first test of this script on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# Stable Diffusion 1.5's component configs (stable-diffusion-v1-5/stable-diffusion-v1-5, the
# unet/, vae/ and text_encoder/ config.json files), written out so that nothing is downloaded.
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
# CLIP ViT-L/14's image tower (openai/clip-vit-large-patch14): conf/model/sd15.yaml's critic encoder.
VIT_L14_VISION = {
    "image_size": 224,
    "patch_size": 14,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}

# Stable Diffusion 3.5 Medium's transformer (stabilityai/stable-diffusion-3.5-medium,
# transformer/config.json): MMDiT-X, 24 joint blocks of which 0-12 add image-only self-attention.
SD35M_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}
# Its VAE (vae/config.json): 16 latent channels, 8x downscale, no quant convs, SD3's shift and scale.
SD35_VAE = {
    **SD15_VAE,  # the same encoder and decoder blocks as SD 1.5's VAE
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# CLIP-L's and OpenCLIP bigG's projection widths: SD3's pooled conditioning is the two, concatenated.
SD35_POOLED_WIDTHS = (768, 1280)
# The CPU's stand-in (--tiny): the same structure (dual attention, RMS q/k norm, a cropped position
# embedding, 16 latent channels) at toy widths, 8x8 latents, a VAE without downscale.
TINY_SD35_TRANSFORMER = {
    **SD35M_TRANSFORMER,
    "sample_size": 8,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 64,
    "pos_embed_max_size": 8,
    "dual_attention_layers": [0],
}
TINY_SD35_VAE = {
    **SD35_VAE,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [8],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 8,
}
TINY_POOLED_WIDTHS = (32, 32)

EXPERIMENTS = {"DDPO": "ddpo_aesthetic", "TDPO-R": "tdpo_aesthetic"}
CHECKS = ("sd15", "sd35m")
FLOW_GRPO = "Flow-GRPO"
TIME_BUDGET_S = 8 * 60
RATIO_KEYS = ("ratio", "approx_kl", "clipfrac", "pg_clipfrac")


# -- the offline pipeline -----------------------------------------------------------------------
def sd15_components(seed: int = 0):
    """Stable Diffusion 1.5's UNet, VAE and text encoder with random weights (seeded), rlft's
    byte-level tokenizer at 77 tokens and its DDIM scheduler: rlft.models.Components."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rlft.ddim import make_scheduler
    from rlft.models import Components, character_tokenizer

    tokenizer = character_tokenizer(max_length=77)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, **special))
    return Components(unet, vae, text_encoder, tokenizer, make_scheduler())


def vit_l14_image_tower(seed: int = 0):
    """CLIP ViT-L/14's vision tower and projection with random weights (seeded)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14_VISION))


def tiny_parts():
    """The tiny model's components and critic encoder tower, as conf/model/tiny.yaml builds them."""
    from rlft.config import build, load_option

    tiny = load_option("model", "tiny")
    return build(tiny.components), build(tiny.image_embedder).model


def save_offline_model(directory: Path, tiny: bool) -> tuple[Path, Path, dict[str, float]]:
    """Build the random-weight pipeline and critic encoder and save them under `directory`;
    returns (pipeline dir, encoder dir, millions of parameters per component)."""
    from rlft.models import sd_pipeline

    components, tower = tiny_parts() if tiny else (sd15_components(), vit_l14_image_tower())
    pipeline_dir, encoder_dir = directory / "pipeline", directory / "image_encoder"
    sd_pipeline(components).save_pretrained(pipeline_dir, safe_serialization=True)
    tower.save_pretrained(encoder_dir, safe_serialization=True)
    sizes = {
        "unet": components.unet,
        "vae": components.vae,
        "text_encoder": components.text_encoder,
        "image_encoder": tower,
    }
    return pipeline_dir, encoder_dir, {name: _millions(module) for name, module in sizes.items()}


def _millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def sd35_medium_components(seed: int = 0, tiny: bool = False):
    """SD3.5 Medium's transformer and VAE (SD35M_TRANSFORMER, SD35_VAE; with `tiny` the CPU's
    stand-ins) with random weights (seeded), two small random CLIP text encoders whose projections
    have SD3.5's widths (so the pooled conditioning is the transformer's 2048), rlft's byte-level
    tokenizers, no T5 (zeros in its place) and SD3's flow-match scheduler (shift 3): the components
    model=sd3_5_medium loads, built offline (a Hydra target: model.components._target_)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from rlft.families.sd3 import SD3Components
    from rlft.models import character_tokenizer

    tokenizers = [character_tokenizer(), character_tokenizer()]
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG stream is untouched
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**(TINY_SD35_TRANSFORMER if tiny else SD35M_TRANSFORMER))
        vae = AutoencoderKL(**(TINY_SD35_VAE if tiny else SD35_VAE))
        encoders = [
            CLIPTextModelWithProjection(
                CLIPTextConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=2,  # SD3 conditions on the penultimate layer's states
                    num_attention_heads=4,
                    projection_dim=width,
                    max_position_embeddings=tokenizer.model_max_length,
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
            for tokenizer, width in zip(tokenizers, TINY_POOLED_WIDTHS if tiny else SD35_POOLED_WIDTHS, strict=True)
        ]
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3.5-M's scheduler/scheduler_config.json
    return SD3Components(
        transformer, vae, encoders[0], tokenizers[0], encoders[1], tokenizers[1], None, None, scheduler
    )


def sd35_transformer_millions(tiny: bool = False) -> float:
    """Millions of parameters of the SD3.5-M transformer config (or its stand-in), counted on the
    meta device (no memory, no initialisation)."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        return _millions(SD3Transformer2DModel(**(TINY_SD35_TRANSFORMER if tiny else SD35M_TRANSFORMER)))


def flow_grpo_overrides(work: Path, device: str, steps: int | None, tiny: bool) -> list[str]:
    """model=sd3_5_medium with algorithm=grpo at the model's own sizes (one group of 24 images, 10
    steps, guidance 4.5, the first 9 steps trained), its components built here,
    the exact JPEG reward, one epoch; with `tiny` the stand-in model at CPU sizes (8 images in
    groups of 4, 2 steps, both trained)."""
    chosen = [
        "model=sd3_5_medium",
        "algorithm=grpo",
        "~model.components",  # (load_sd3's arguments go with it)
        f"+model.components={{_target_:rlft.gpu_check.sd35_medium_components,seed:0,tiny:{str(tiny).lower()}}}",
        "reward=jpeg_compressibility",
        "eval_rewards=[]",
        "epochs=1",
        "showcase.samples=0",
        "sample.num_images_logged=0",
        f"output_root='{work}'",
    ]
    if tiny:  # the stand-in's native size, a short T5 share (zeros), CPU-sized groups
        chosen += [
            "model.policy.resolution=null",
            "model.policy.max_sequence_length=8",
            "sample.batch_size=4",
            "sample.num_batches_per_epoch=2",
            "sample.images_per_prompt=4",
            "train.batch_size=4",
            "train.gradient_accumulation_steps=2",
        ]
    chosen += _hardware(device)
    if steps is not None:
        chosen.append(f"sample.num_steps={steps}")
    return chosen


def _hardware(device: str) -> list[str]:
    if device == "cuda":
        return ["hardware=gpu"]
    return ["hardware=cpu", "hardware.precision=bf16-mixed", "hardware.frozen_dtype=bfloat16"]  # the GPU's precision


# -- one run through rlft.train.train -----------------------------------------------------------
def overrides(
    experiment: str, pipeline_dir: Path, encoder_dir: Path, work: Path, device: str, batches: int, steps: int | None
) -> list[str]:
    """The preset on the offline model, one epoch, the exact JPEG reward, no extra downloads."""
    chosen = [
        f"experiment={experiment}",
        "model=sd15",
        f"model.path='{pipeline_dir}'",
        f"model.image_embedder.path='{encoder_dir}'",
        "reward=jpeg_compressibility",
        "eval_rewards=[]",  # the TDPO presets score ImageReward, PickScore, HPSv2 (downloads)
        "epochs=1",
        "showcase.samples=0",
        "sample.num_images_logged=0",
        f"sample.num_batches_per_epoch={batches}",
        f"output_root='{work}'",
    ]
    chosen += _hardware(device)
    if steps is not None:
        chosen.append(f"sample.num_steps={steps}")
    return chosen


def compose_run(chosen: list[str]):
    from hydra import compose, initialize_config_dir

    from rlft.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=chosen)


class FirstUpdateWatch:
    """Records the policy loss's ratio metrics of every micro-step before the policy optimizer's
    first step, and the peak GPU memory of the epoch (read before the floor is measured).

    A Lightning callback (made by `callback()`) registers a post-step hook on the policy optimizer;
    the micro-steps' metrics are read where the algorithms hand them to MetricMeans.add, kept as
    tensors (no device sync inside the epoch) and read after it."""

    def __init__(self) -> None:
        self.module = None
        self.updates = 0
        self.before_update: list[dict[str, torch.Tensor]] = []
        self.peak_bytes: int | None = None

    def callback(self):
        from lightning.pytorch.callbacks import Callback

        watch = self

        class Watch(Callback):
            def setup(self, trainer, pl_module, stage) -> None:
                watch.module = pl_module

            def on_train_start(self, trainer, pl_module) -> None:
                trainer.optimizers[0].register_step_post_hook(watch._count_update)  # the policy's optimizer

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if pl_module.device.type == "cuda":
                    watch.peak_bytes = torch.cuda.max_memory_allocated(pl_module.device)

            def teardown(self, trainer, pl_module, stage) -> None:
                watch.module = None  # the model's memory goes when train() returns

        return Watch()

    def _count_update(self, optimizer, args, kwargs) -> None:
        self.updates += 1

    @contextmanager
    def recording(self):
        from rlft.algorithms.base import MetricMeans

        original = MetricMeans.add
        watch = self

        def add(means, **metrics) -> None:
            if watch.updates == 0:
                watch.before_update.append(
                    {k: torch.as_tensor(metrics[k]).detach() for k in RATIO_KEYS if k in metrics}
                )
            original(means, **metrics)

        MetricMeans.add = add
        try:
            yield self
        finally:
            MetricMeans.add = original

    def summary(self) -> dict[str, float]:
        """The first micro-step's ratio and RMS log-ratio (sqrt(2 approx_kl): both algorithms'
        approx_kl are 1/2 mean(log_ratio^2) to second order), and the largest over all micro-steps
        before the first update."""
        if not self.before_update:
            raise RuntimeError("gpu_check: no policy-loss metrics were recorded (has MetricMeans.add moved?)")
        ratios = torch.stack([m["ratio"].float().cpu() for m in self.before_update])
        rms = torch.stack([(2 * m["approx_kl"].float().cpu()).clamp(min=0).sqrt() for m in self.before_update])
        return {
            "micro_steps_before_update": float(len(self.before_update)),
            "first_ratio": ratios[0].item(),
            "first_rms_log_ratio": rms[0].item(),
            "max_abs_ratio_minus_1": (ratios - 1).abs().max().item(),
            "max_rms_log_ratio": rms.max().item(),
        }


@contextmanager
def extra_callbacks(callbacks: list):
    """rlft.train.train with `callbacks` added to its Trainer (train() takes none of its own)."""
    import rlft.train

    original = rlft.train.build_trainer

    def build_trainer(cfg, **settings):
        return original(cfg, **{**settings, "callbacks": [*settings.get("callbacks", []), *callbacks]})

    rlft.train.build_trainer = build_trainer
    try:
        yield
    finally:
        rlft.train.build_trainer = original


def run_epoch(cfg, run_dir: Path) -> dict[str, float]:
    """One epoch through rlft.train.train, with make bench's epoch timer and floor, and the ratio watch."""
    from rlft.bench import EpochTimer, compute_floor
    from rlft.train import train

    watch = FirstUpdateWatch()
    watch_callback = watch.callback()
    timer = EpochTimer(lambda: compute_floor(watch.module, cfg))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with watch.recording(), extra_callbacks([watch_callback, timer]):  # the watch reads memory before the floor
        metrics = train(cfg, run_dir)
    floor_sampling, floor_training = timer.floors[0]
    epoch_s = timer.seconds[0]
    result = {
        "samples": metrics["samples"],
        "num_steps": float(cfg.sample.num_steps),
        "epoch_s": epoch_s,
        "sampling_s": metrics["sampling_s"],
        "reward_wait_s": metrics["reward_wait_s"],
        "training_s": metrics["training_s"],
        "sampling_images_per_s": metrics["samples"] / metrics["sampling_s"],
        "rl_step_images_per_s": metrics["samples"] / epoch_s,
        "floor_s": floor_sampling + floor_training,
        "floor_sampling_s": floor_sampling,
        "floor_training_s": floor_training,
        "epoch_over_floor": epoch_s / (floor_sampling + floor_training),
        "sampling_over_floor": metrics["sampling_s"] / floor_sampling,
        "training_over_floor": metrics["training_s"] / floor_training,
        "epoch_ratio_mean": metrics.get("ratio", math.nan),
        "epoch_approx_kl": metrics.get("approx_kl", math.nan),
        **watch.summary(),
    }
    if watch.peak_bytes is not None:
        result["peak_gpu_memory_gb"] = watch.peak_bytes / 2**30
    return result


def report(name: str, experiment: str, cfg, r: dict[str, float], atol: float) -> bool:
    s, t = cfg.sample, cfg.train
    ok = r["max_abs_ratio_minus_1"] <= atol and r["max_rms_log_ratio"] <= atol
    memory = f", peak GPU memory {r['peak_gpu_memory_gb']:.2f} GiB" if "peak_gpu_memory_gb" in r else ""
    print(
        f"\nrlft gpu-check: {name}, one epoch ({experiment}: {r['samples']:.0f} samples of {s.num_steps} steps, "
        f"sample batch {s.batch_size}, train batch {t.batch_size} x {t.gradient_accumulation_steps} accumulation)"
    )
    print(
        f"  epoch {r['epoch_s']:.2f} s = sampling {r['sampling_s']:.2f} + reward wait {r['reward_wait_s']:.2f} + "
        f"training {r['training_s']:.2f} (+ the rest); images/s: sampling {r['sampling_images_per_s']:.3f}, "
        f"whole RL step {r['rl_step_images_per_s']:.3f}{memory}"
    )
    print(
        f"  floor {r['floor_s']:.2f} s (sampling {r['floor_sampling_s']:.2f}, training {r['floor_training_s']:.2f}): "
        f"epoch / floor {r['epoch_over_floor']:.2f} (sampling {r['sampling_over_floor']:.2f}, "
        f"training {r['training_over_floor']:.2f})"
    )
    print(
        f"  importance ratio before the first update: first micro-step {r['first_ratio']:.8f} "
        f"(RMS log-ratio {r['first_rms_log_ratio']:.1e}); over {r['micro_steps_before_update']:.0f} micro-steps "
        f"max |ratio - 1| {r['max_abs_ratio_minus_1']:.1e}, max RMS log-ratio {r['max_rms_log_ratio']:.1e} "
        f"-> {'ok' if ok else 'FAIL'} (tolerance {atol:g})"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlft.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny models' shapes and few steps, on the CPU")
    parser.add_argument(
        "--checks",
        nargs="+",
        choices=CHECKS,
        default=list(CHECKS),
        help="sd15: DDPO and TDPO-R epochs on SD 1.5's shapes; sd35m: a Flow-GRPO step on SD3.5 Medium's (default: both)",
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], help="with --tiny: where to run (default cpu)")
    parser.add_argument("--batches", type=int, default=2, help="SD 1.5: sample.num_batches_per_epoch (presets: 4)")
    parser.add_argument(
        "--steps", type=int, help="sample.num_steps (default: the presets' and the model's, 50 and 10; 2 with --tiny)"
    )
    parser.add_argument("--ratio-atol", type=float, default=1e-5, help="allowed |ratio - 1| and RMS log-ratio")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.tiny else "cuda")
    if not args.tiny and device != "cuda":
        parser.error("Stable Diffusion 1.5's and 3.5's shapes run on a CUDA GPU only; --tiny runs the CPU path")
    if device == "cuda" and not torch.cuda.is_available():
        print(
            "rlft.gpu_check: needs a CUDA GPU and torch sees none here "
            "(python -m rlft.gpu_check --tiny runs the CPU path)",
            file=sys.stderr,
        )
        return 2
    steps = args.steps if args.steps is not None else (2 if args.tiny else None)
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded: every weight is built here
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlft-gpu-check-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        return _check(args, device, steps, work, start)


def _check(args, device: str, steps: int | None, work: Path, start: float) -> int:
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    results: dict = {"device": where}
    ok = True
    if "sd15" in args.checks:
        ok = _sd15_checks(args, device, steps, work, start, where, results) and ok
    if "sd35m" in args.checks:
        ok = _flow_grpo_check(args, device, steps, work, where, results) and ok
    results["total_s"] = total_s = time.perf_counter() - start
    print(
        f"\ntotal {total_s:.0f} s (the SD 1.5 check is sized for {TIME_BUDGET_S // 60} min); "
        "each figure is one epoch, warm-up included"
    )
    print("ok" if ok else "FAIL: the importance ratio is not 1 before the first update")
    _write(args, results)
    return 0 if ok else 1


def _sd15_checks(args, device: str, steps: int | None, work: Path, start: float, where: str, results: dict) -> bool:
    """A DDPO and a TDPO-R epoch on SD 1.5's shapes (the SD 1.x family)."""
    built = time.perf_counter()
    pipeline_dir, encoder_dir, sizes = save_offline_model(work / "model", args.tiny)
    built_s = time.perf_counter() - built
    shapes = "the tiny model's shapes" if args.tiny else "Stable Diffusion 1.5's shapes"
    print(
        f"rlft gpu-check on {where}: torch {torch.__version__}, {shapes} with random weights (M parameters: "
        + ", ".join(f"{name} {m:.3g}" for name, m in sizes.items())
        + f"), LoRA r4, bf16-mixed; built and saved in {built_s:.1f} s",
        flush=True,
    )
    results.update(sizes_m=sizes, built_s=built_s)
    ok = True
    for name, experiment in EXPERIMENTS.items():
        cfg = compose_run(overrides(experiment, pipeline_dir, encoder_dir, work, device, args.batches, steps))
        results[name] = run_epoch(cfg, work / "runs" / name)
        ok = report(f"{name} on {where}", experiment, cfg, results[name], args.ratio_atol) and ok
        _after_run(args, device, results)
    return ok


def _flow_grpo_check(args, device: str, steps: int | None, work: Path, where: str, results: dict) -> bool:
    """One Flow-GRPO step (a GRPO epoch) on SD3.5 Medium's transformer (the SD3 family). Never run on
    a GPU yet: written and tested on the CPU only (--tiny, and the full model's shapes on the meta
    device in tests/test_gpu_check.py)."""
    cfg = compose_run(flow_grpo_overrides(work, device, steps, args.tiny))
    shapes = "a tiny SD3.5-shaped transformer" if args.tiny else "SD3.5 Medium's transformer and VAE"
    print(
        f"\nrlft gpu-check on {where}: {shapes} with random weights, {cfg.model.policy.resolution or 'native'} px, "
        f"LoRA r{cfg.model.lora.r} alpha {cfg.model.lora.lora_alpha}, {cfg.hardware.precision}, "
        f"guidance {cfg.sample.guidance_scale:g}, groups of {cfg.sample.images_per_prompt}",
        flush=True,
    )
    result = run_epoch(cfg, work / "runs" / FLOW_GRPO)
    result["transformer_m"] = sd35_transformer_millions(args.tiny)
    results[FLOW_GRPO] = result
    ok = report(f"{FLOW_GRPO} on {where}", "model=sd3_5_medium algorithm=grpo", cfg, result, args.ratio_atol)
    print(
        f"  transformer {result['transformer_m']:.4g} M parameters; a full Flow-GRPO step: "
        f"{result['rl_step_images_per_s']:.3f} images/s"
    )
    _after_run(args, device, results)
    return ok


def _after_run(args, device: str, results: dict) -> None:
    sys.stdout.flush()
    _write(args, results)  # after each run: a run cut short still leaves the finished ones' figures
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _write(args, results: dict) -> None:
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())

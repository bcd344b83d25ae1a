"""`python -m rlft.bench [options] [overrides]` (`make bench`): where an RL epoch's time goes.

For each model and setting it runs real epochs (the same RLModule under Lightning, no logger or
checkpoints) and, in the same process, the model's own compute for that epoch with no RL code
around it (the floor, compute_floor): the sampling phase's prompt encodes, denoiser forward passes
(the family's UNet or transformer, CFG-batched) and VAE decodes, and the training phase's denoiser
forward+backward passes. It prints seconds per epoch split into sampling, reward and training,
images per second, the floor, the ratio epoch / floor (and per phase: sampling / its floor,
training / its floor), the best ratio (fastest epoch / fastest floor: load on a shared machine only
ever adds time), and peak memory; then how epoch time grows with sampler steps and with batch size.
Every configuration runs in its own process (so peak RSS is its own); timings are medians over
repetitions after warm-up, with the spread (max - min); each epoch's floor is measured right after
it. Each model runs its algorithm (MODEL_ALGORITHMS: the flow model tiny_sd3 trains with GRPO, the
others with the default, DDPO) unless the overrides name one.

Not a test: it has no pass or fail. Overrides (e.g. `hardware=gpu model=sd15`) go to every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from lightning.pytorch.callbacks import Callback

SETTINGS = {
    # 8 samples per epoch, 10 steps, sample batch 4, train batch 2
    "small": [
        "sample.batch_size=4",
        "sample.num_batches_per_epoch=2",
        "sample.num_steps=10",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=1",
    ],
    "default": [],  # experiment=demo's: 16 samples, 10 steps, batch 8, train 4 x 4
}
# The algorithm each model is benchmarked with when the overrides choose none (otherwise the default).
MODEL_ALGORITHMS = {"tiny_sd3": "grpo"}
STEP_POINTS = (5, 10, 20)
BATCH_POINTS = (2, 4, 8)


# -- one configuration, in its own process ------------------------------------------------------
def measure(overrides: list[str], warmup: int, repeats: int) -> dict:
    """Run warmup + repeats epochs, then as many floor measurements; medians and spreads."""
    import lightning.pytorch as pl
    from hydra import compose, initialize_config_dir

    from rlft.config import CONFIG_DIR, on_experiment
    from rlft.quiet import quiet_known_warnings
    from rlft.train import build_module, build_trainer, validate

    quiet_known_warnings()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            # On the jpeg demo's sizes (experiment=demo) unless the overrides pick an experiment.
            overrides=on_experiment(
                ["sample.num_images_logged=0", "showcase.samples=0", *overrides, f"epochs={warmup + repeats}"], "demo"
            ),
        )
    validate(cfg)
    pl.seed_everything(cfg.seed, verbose=False)
    with tempfile.TemporaryDirectory() as run_dir:
        module = build_module(cfg, run_dir)
        epoch_seconds = EpochTimer(lambda: compute_floor(module, cfg))
        trainer = build_trainer(cfg, logger=False, enable_checkpointing=False, callbacks=[epoch_seconds])
        trainer.fit(module)
    history = module.history[warmup:]
    samples = history[0]["samples"]
    result = {"samples": samples, "steps": cfg.sample.num_steps, "algorithm": type(module.algorithm).__name__.lower()}
    series = {
        "epoch_s": epoch_seconds.seconds[warmup:],
        "sampling_s": [h["sampling_s"] for h in history],
        "reward_wait_s": [h["reward_wait_s"] for h in history],
        "training_s": [h["training_s"] for h in history],
        "floor_s": [sum(f) for f in epoch_seconds.floors[warmup:]],
        "floor_sampling_s": [f[0] for f in epoch_seconds.floors[warmup:]],
        "floor_training_s": [f[1] for f in epoch_seconds.floors[warmup:]],
    }
    for name, values in series.items():
        result[name] = statistics.median(values)
        result[name + "_spread"] = max(values) - min(values)
    result["images_per_s"] = samples / result["epoch_s"]
    # each epoch against the floor measured right after it: robust to the machine's load drifting
    result["ratio"] = statistics.median(e / f for e, f in zip(series["epoch_s"], series["floor_s"], strict=True))
    # the fastest epoch against the fastest floor: on a shared machine, load only ever adds time
    result["best_ratio"] = min(series["epoch_s"]) / min(series["floor_s"])
    for phase in ("sampling", "training"):  # where the time above the floor goes
        pairs = zip(series[f"{phase}_s"], series[f"floor_{phase}_s"], strict=True)
        result[f"{phase}_ratio"] = statistics.median(e / f if f > 0 else math.nan for e, f in pairs)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


class EpochTimer(Callback):
    """Wall time of each RL epoch (Lightning's training step: sampling to report), and the floor
    measured right after each epoch, so that both see the same machine load."""

    def __init__(self, floor) -> None:
        self.floor = floor
        self.seconds: list[float] = []
        self.floors: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        _synchronize(module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        _synchronize(module.device)
        self.seconds.append(time.perf_counter() - self._start)
        with torch.random.fork_rng(devices=[]):  # the floor's random inputs leave the run's RNG alone
            self.floors.append(self.floor())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_floor(module, cfg) -> tuple[float, float]:
    """Seconds of the epoch's model compute alone, (sampling, training): the family's text encoders,
    denoiser (called bare: rlft.bench.denoiser_call) and VAE as many times and on the same shapes as
    the epoch called them, with none of the RL code (no kernel step, log-probs, rewards, advantages
    or optimizer). Sampling: per batch, the prompts' encoding (padded to the encoders' full length,
    so any text costs the same), one guided denoiser call per sampler step (the [unconditional;
    conditional] batch when guidance > 1) and a decode; training: forward+backward of each
    micro-step the epoch ran (GRPO trains only the samples with an advantage, so the count is the
    epoch's own)."""
    policy, s, t = module.policy, cfg.sample, cfg.train
    device = policy.device
    guided = s.guidance_scale > 1.0
    micro_steps = sum(module.backward_passes.values())
    sample_call = denoiser_call(policy, s.batch_size, guided)
    train_call = denoiser_call(policy, t.batch_size, guided and t.cfg)
    final_latents = torch.randn((s.batch_size, *policy.latent_shape), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in str(cfg.hardware.precision))
    _synchronize(device)
    start = time.perf_counter()
    with autocast:
        with torch.no_grad():
            for _ in range(s.num_batches_per_epoch):
                policy.encode_prompts([""] * s.batch_size)
                for _ in range(s.num_steps):
                    sample_call()
                policy.decode(final_latents)
        _synchronize(device)
        sampling = time.perf_counter() - start
        for _ in range(micro_steps):
            train_call().float().square().mean().backward()
    _synchronize(device)
    training = time.perf_counter() - start - sampling
    policy.denoiser.zero_grad(set_to_none=True)
    return sampling, training


def denoiser_call(policy, batch_size: int, guided: bool) -> Callable[[], torch.Tensor]:
    """One bare call of the family's denoiser on a sampler step's shapes (twice the rows with
    guidance), on random latents and the empty prompt's conditioning made here: the network's output
    (no guidance combination, no kernel). The call is the one the family's policy makes
    (SD1Policy.predict_noise, SD3Policy.velocity_at)."""
    network = policy.denoiser
    dtype = next(network.parameters()).dtype
    rows = batch_size * (2 if guided else 1)
    latents = torch.randn((rows, *policy.latent_shape), device=policy.device, dtype=dtype)
    timestep = torch.full((rows,), 500.0, device=policy.device)  # mid-chain (SD3: sigma 0.5 x 1000)
    conditioning = policy.encode_prompts([""] * rows).to(dtype)
    if policy.denoiser_name == "unet":
        timestep = timestep.long()
        return lambda: network(latents, timestep, conditioning, return_dict=False)[0]
    if policy.denoiser_name == "transformer":
        hidden, pooled = conditioning.hidden_states, conditioning.pooled
        return lambda: network(
            hidden_states=latents, timestep=timestep, encoder_hidden_states=hidden, pooled_projections=pooled,
            return_dict=False,
        )[0]  # fmt: skip
    raise SystemExit(
        f"rlft.bench: no compute floor for {policy.family} ({policy.denoiser_name}); add it to denoiser_call"
    )


# -- the driver ---------------------------------------------------------------------------------
def run_configuration(overrides: list[str], warmup: int, repeats: int) -> dict:
    command = [sys.executable, "-m", "rlft.bench", "--one", json.dumps(overrides), f"--warmup={warmup}"]
    command.append(f"--repeats={repeats}")
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"rlft.bench: {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _seconds(result: dict, key: str) -> str:
    return f"{result[key]:7.3f} ±{result[key + '_spread']:.3f}"


def print_table(rows: list[tuple[str, str, dict]]) -> None:
    header = (
        f"{'model':<9} {'algo':<5} {'setting':<8} {'epoch s':>14} {'sampling s':>14} {'reward wait s':>14} "
        f"{'training s':>14} {'img/s':>7} {'floor s':>14} {'ratio':>6} {'(sampl.':>7} {'train.)':>7} {'best':>5} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for model, setting, r in rows:
        memory = f"{r['peak_rss_mb']:11.0f}" + (
            f"  CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""
        )
        print(
            f"{model:<9} {r['algorithm']:<5} {setting:<8} {_seconds(r, 'epoch_s')} {_seconds(r, 'sampling_s')} "
            f"{_seconds(r, 'reward_wait_s')} {_seconds(r, 'training_s')} {r['images_per_s']:7.1f} "
            f"{_seconds(r, 'floor_s')} {r['ratio']:6.2f} {r['sampling_ratio']:7.2f} {r['training_ratio']:7.2f} {r['best_ratio']:5.2f} {memory}"
        )


def print_scaling(title: str, points: list[tuple[int, dict]], per: str) -> None:
    print(f"\n{title}")
    print(f"{'value':>6} {'epoch s':>14} {'floor s':>14} {'ratio':>6} {'ms per ' + per:>18}")
    for value, r in points:
        units = r["samples"] * (r["steps"] if per == "image-step" else 1)
        print(
            f"{value:>6} {_seconds(r, 'epoch_s')} {_seconds(r, 'floor_s')} {r['ratio']:6.2f} "
            f"{1000 * r['epoch_s'] / units:18.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlft.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="rlft overrides for every run (e.g. hardware=gpu model=sd15)")
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "small", "tiny_sd3"], help="ignored when overrides set model="
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--warmup", type=int, default=1, help="epochs (and floor runs) not timed")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs (and floor runs)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the steps and batch-size series")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, JSON overrides
    args = parser.parse_args(argv)

    if args.one is not None:
        print(json.dumps(measure(json.loads(args.one), args.warmup, args.repeats)))
        return

    models = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model=")] or args.models
    base = [o for o in args.overrides if not o.startswith("model=")]
    print(f"rlft bench: torch {torch.__version__}, {torch.get_num_threads()} threads, overrides: {base or 'none'}")
    print(f"medians of {args.repeats} epochs after {args.warmup} warm-up (± max - min)\n")
    rows = []
    for model in models:
        for setting in args.settings:
            result = run_configuration([*model_overrides(model, base), *SETTINGS[setting], *base], *_reps(args))
            rows.append((model, setting, result))
    print_table(rows)
    if args.no_scaling:
        return
    model = models[0]
    chosen = model_overrides(model, base)
    steps = [
        (n, run_configuration([*chosen, *SETTINGS["small"], f"sample.num_steps={n}", *base], *_reps(args)))
        for n in STEP_POINTS
    ]
    print_scaling(f"model={model}, small setting, by sample.num_steps", steps, "image-step")
    batches = [
        (
            b,
            run_configuration(
                [
                    *chosen,
                    *SETTINGS["small"],
                    f"sample.batch_size={b}",
                    "sample.num_batches_per_epoch=2",
                    *base,
                ],
                *_reps(args),
            ),
        )
        for b in BATCH_POINTS
    ]
    print_scaling(f"model={model}, small setting, by sample.batch_size (2 batches per epoch)", batches, "image")


def model_overrides(model: str, base: list[str]) -> list[str]:
    """`model=<model>`, and its benchmark algorithm (MODEL_ALGORITHMS) unless `base` chooses one."""
    chosen = [f"model={model}"]
    if model in MODEL_ALGORITHMS and not any(o.startswith(("algorithm=", "+algorithm=")) for o in base):
        chosen.append(f"algorithm={MODEL_ALGORITHMS[model]}")
    return chosen


def _reps(args) -> tuple[int, int]:
    return args.warmup, args.repeats


if __name__ == "__main__":
    main()

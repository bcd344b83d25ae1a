"""GenEval on the compositional toy world: prompts to train on, GenEval's strict reward, and a fixed
evaluation that reports GenEval's per-kind and overall scores with their standard errors
(docs/geneval.md).

- `CompositionalPrompts` (prompt=toy_geneval): endless draws of the world's captions of the chosen task
  kinds, each with GenEval's metadata.
- `ToyGenEvalReward` (reward=toy_geneval, and reward=toy_geneval_<kind>): 1 where the image read back
  satisfies GenEval's strict rule for its caption (rlft.toy.compositional.satisfies), else 0. With
  `kind`, images of other kinds' prompts score NaN: not scored.
- `evaluation_prompts` and `evaluate_geneval`: a fixed prompt set, each prompt sampled with fixed noise
  per image, scored, and summarised per kind (`format_table`).
- `python -m rlft.toy.geneval [--checkpoint RUN] [OVERRIDE ...]`: the evaluation of a run's checkpoint or
  of a base model, as a table on the terminal and a JSON file (`python -m rlft.toy.geneval --help`).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlft.errors import ConfigError, RlftError
from rlft.prompts import PromptSource
from rlft.toy.compositional import KINDS, CompositionalWorld, read_batch, satisfies

if TYPE_CHECKING:
    import torch

    from rlft.families.base import DiffusionPolicy
    from rlft.kernels.choice import Kernel

# The evaluation prompts' seed: evaluation_prompts() is the same list for it forever (tests pin it). It is
# drawn from another stream than the training prompts (_seed's first part), whatever prompt.seed is.
EVALUATION_SEED = 0
_TRAINING, _EVALUATION = 0, 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rlft.toy.geneval",
        description="GenEval's per-kind and overall strict scores of a model on the compositional toy world: a "
        "fixed set of prompts per task kind, each sampled with fixed noise, read back and checked exactly "
        "(docs/geneval.md). Prints a table and writes geneval.json (and a grid of images) to --out.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="without --checkpoint: the training config's overrides of the model to evaluate before training, as "
        "`python -m rlft` takes them (model=toy model.path=...); with --checkpoint: sample.* keys only, to "
        "evaluate at other sampler settings than the run's (sample.num_steps=20)",
    )
    parser.add_argument("--checkpoint", help="a run directory (its checkpoints/last.ckpt) or a checkpoint (.ckpt)")
    parser.add_argument("--base", help="with --checkpoint: a local copy of the run's base model, if it is not here")
    parser.add_argument("--per-kind", type=int, default=64, help="evaluation prompts per task kind (default 64)")
    parser.add_argument("--seeds-per-prompt", type=int, default=4, help="images per prompt (default 4, GenEval's)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per sampling batch (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="the noise seed (default 0)")
    parser.add_argument("--grid", type=int, default=48, help="images saved in geneval.png (default 48; 0: none)")
    parser.add_argument("--out", help="the output directory (default: RUN/geneval for a checkpoint, else "
                        "<output_root>/geneval/<date_time>)")  # fmt: skip
    parser.add_argument("--device", help="where to sample (default: cuda if there is a GPU, else cpu)")
    args = parser.parse_args(argv)
    for flag, value, low in (("--per-kind", args.per_kind, 1), ("--seeds-per-prompt", args.seeds_per_prompt, 1),
                             ("--batch-size", args.batch_size, 1), ("--grid", args.grid, 0)):  # fmt: skip
        if value < low:
            parser.error(f"{flag} {value}: must be at least {low}")
    if args.base and not args.checkpoint:
        parser.error("--base applies to --checkpoint RUN; add it or leave --base out")
    return args


if __name__ == "__main__":  # the command line is read before torch and the rewards load (seconds): --help is instant
    ARGUMENTS = parse_args(sys.argv[1:])

from rlft.rewards.base import Reward


def _seed(*parts: int) -> int:
    """A 32-bit seed derived from its parts (a world's, an image's noise)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _kinds(kinds: Sequence[str] | str | None) -> tuple[str, ...]:
    """The task kinds asked for, checked; ConfigError about the argument `kinds` (prompt.kinds)."""
    if kinds is None:
        return KINDS
    listed = [kinds] if isinstance(kinds, str) else [str(k) for k in kinds]
    shown = f"[{','.join(listed)}]"
    if not listed:
        raise ConfigError(
            f"{{key}}=[]: give at least one task kind, e.g. [counting]; known: {', '.join(KINDS)}", "kinds"
        )
    for kind in listed:
        if kind not in KINDS:
            raise ConfigError(f"{{key}}={shown}: {kind!r} is not a task kind; known: {', '.join(KINDS)}", "kinds")
    repeated = sorted({kind for kind in listed if listed.count(kind) > 1})
    if repeated:
        raise ConfigError(f"{{key}}={shown} names {', '.join(repeated)} more than once; list each kind once", "kinds")
    return tuple(listed)


def kind_prompts(kind: str, count: int, seed: int = EVALUATION_SEED) -> list[tuple[str, dict[str, Any]]]:
    """`count` (caption, metadata) of one kind, as distinct as the kind allows: the world's captions in
    the order a seeded world first draws them; a kind with fewer distinct captions (counting has 9) has
    each of them in turn, every one as often as another or once more."""
    world = CompositionalWorld(_seed(_EVALUATION, seed, KINDS.index(kind)))
    distinct: dict[str, dict[str, Any]] = {}
    # 20 draws per caption wanted miss one of a kind's at most 216 captions with a chance below 1e-6
    for _ in range(20 * max(count, 50)):
        caption, metadata = world.prompt(kind)
        distinct.setdefault(caption, metadata)
        if len(distinct) == count:
            break
    found = list(distinct.items())
    return [(found[i % len(found)][0], dict(found[i % len(found)][1])) for i in range(count)]


def evaluation_prompts(per_kind: int = 64, seed: int = EVALUATION_SEED) -> list[tuple[str, dict[str, Any]]]:
    """The fixed evaluation set: `per_kind` prompts of each of GenEval's six kinds, in KINDS order
    (kind_prompts); the same list for a seed on every call and machine."""
    return [prompt for kind in KINDS for prompt in kind_prompts(kind, per_kind, seed)]


class CompositionalPrompts(PromptSource):
    """The compositional world's captions with GenEval's metadata (prompt=toy_geneval): each draw picks
    one of `kinds` (default: all six) uniformly, then a caption of it from a world seeded by `seed` and
    the draw. Deterministic given the random.Random it draws from (the run's per-epoch prompt stream).
    `.prompts`: a representative list (the distinct captions of the evaluation set of these kinds)."""

    def __init__(self, kinds: Sequence[str] | str | None = None, seed: int = 0):
        self.kinds = _kinds(kinds)
        self.seed = int(seed)
        shown = [caption for kind in self.kinds for caption, _ in kind_prompts(kind, 64)]
        super().__init__(list(dict.fromkeys(shown)))

    def sample(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        kind = rng.choice(self.kinds)
        return CompositionalWorld(_seed(_TRAINING, self.seed, rng.randrange(2**32))).prompt(kind)


class ToyGenEvalReward(Reward):
    """GenEval's strict score on the compositional world: 1 where the objects read from the image
    (rlft.toy.compositional.read_batch) satisfy the caption's metadata (satisfies), else 0. With `kind`,
    only prompts of that kind are scored; images of other kinds' prompts score NaN (not scored), which
    the eval metrics leave out of their means (eval_toy_geneval_<kind>_mean)."""

    background = True  # numpy only: scored in the reward thread while sampling goes on

    def __init__(self, kind: str | None = None):
        if kind is not None and kind not in KINDS:
            raise ConfigError(
                f"{{key}}={kind!r} is not a task kind; known: {', '.join(KINDS)}, or null for all", "kind"
            )
        self.kind = kind
        self.name = "toy_geneval" if kind is None else f"toy_geneval_{kind}"

    def score_uint8(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        for prompt, meta in zip(prompts, metadata, strict=True):
            if not isinstance(meta, dict) or meta.get("tag") not in KINDS or "include" not in meta:
                raise ConfigError(
                    f"reward {self.name} checks images against GenEval's metadata of the compositional world's "
                    f"prompts (tag, include, exclude), which {prompt!r} lacks; use prompt=toy_geneval"
                )
        objects = read_batch(np.ascontiguousarray(images))
        scores = [
            float(satisfies(found, meta)) if self.kind in (None, meta["tag"]) else math.nan
            for found, meta in zip(objects, metadata, strict=True)
        ]
        return np.asarray(scores, dtype=np.float32)


# -- the evaluation --------------------------------------------------------------------------------------
class _InOrder(PromptSource):
    """Hands out its (caption, metadata) pairs in order, whatever rng it is given."""

    def __init__(self, items: list[tuple[str, dict[str, Any]]]):
        super().__init__([caption for caption, _ in items])
        self.items, self.next = items, 0

    def sample(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        self.next += 1
        return self.items[self.next - 1]


class _RowStreams:
    """A stream whose normal draws give row i of the batch from its own RandomStream: an image's noise
    (its x_T and every step's) depends on its own seed only, not on the batch it is sampled in.
    (rlft.sampler.rollout draws nothing but `normal` from its stream.)"""

    def __init__(self, seeds: list[int]):
        from rlft.streams import RandomStream

        self.streams = [RandomStream(seed) for seed in seeds]

    def normal(self, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        import torch

        if shape[0] != len(self.streams):
            raise ValueError(f"a draw of {shape[0]} rows from {len(self.streams)} streams")
        rows = [stream.normal((1, *shape[1:])) for stream in self.streams]
        return torch.cat(rows).to(device=device, dtype=dtype or torch.float32)


def accuracy(scores: Sequence[float], prompts: Sequence[str]) -> dict[str, float]:
    """Accuracy of 0/1 `scores` and its standard errors, the images grouped by their `prompts`.

    `se`: clustered by prompt (the CR1 sandwich of a mean, sqrt(G/(G-1) * sum_g r_g^2) / n with r_g the
    summed residuals of prompt g's images and G the distinct prompts; NaN for a single prompt). Images
    of one prompt succeed or fail together more than images of different prompts do, so this is at
    least as wide as `se_binomial`, sqrt(p(1-p)/n), in expectation; both are in the result."""
    y = np.asarray(scores, dtype=np.float64)
    n = len(y)
    if n == 0:
        raise ValueError("no scores")
    p = float(y.mean())
    residuals: dict[str, float] = {}
    for value, prompt in zip(y, prompts, strict=True):
        residuals[prompt] = residuals.get(prompt, 0.0) + value - p
    groups = len(residuals)
    clustered = (
        math.sqrt(groups / (groups - 1) * sum(r * r for r in residuals.values())) / n if groups > 1 else math.nan
    )
    return {"accuracy": p, "se": clustered, "se_binomial": math.sqrt(p * (1 - p) / n), "n": n, "prompts": groups}


def evaluate_geneval(
    policy: DiffusionPolicy,
    per_kind: int = 64,
    seeds_per_prompt: int = 4,
    *,
    num_steps: int,
    guidance_scale: float,
    batch_size: int = 32,
    seed: int = 0,
    kernel: Kernel | None = None,
    prompts_seed: int = EVALUATION_SEED,
    grid: int = 0,
    grid_path: str | Path | None = None,
    keep_images: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """GenEval's scores of `policy`: each of evaluation_prompts(per_kind, prompts_seed) sampled
    `seeds_per_prompt` times (rlft.sampler.rollout at `num_steps` and `guidance_scale`, with the policy's
    kernel or `kernel`), read back and checked by ToyGenEvalReward.

    Image s of prompt i of kind k starts from, and steps with, the noise of its own stream, seeded by
    (seed, k, i, s): the same image whatever the batch size, and the first prompts of a larger
    per_kind are those of a smaller one. The caller's random state is left untouched.

    Returns {"kinds": {kind: accuracy(...)}, "overall": {"accuracy": the mean of the six kinds'
    accuracies (GenEval's overall score), "se": sqrt(sum of their se^2) / 6 (the kinds' images are
    independent), "n"}, "settings": {...}, "prompts": [{"kind", "prompt", "scores"}]}. With `grid` and
    `grid_path`, the first image of each kind's first ceil(grid / 6) prompts is saved there (a grid);
    with `keep_images`, result["images"] holds every image as uint8 (N, H, W, 3), in the prompts' order.
    """
    import torch

    from rlft.images import save_image_grid
    from rlft.rewards.base import RewardRunner, to_uint8
    from rlft.sampler import rollout
    from rlft.streams import stream_seed

    items = []  # (kind index, prompt index, seed index, caption, metadata), sampled in this order
    for k, kind in enumerate(KINDS):
        for i, (caption, metadata) in enumerate(kind_prompts(kind, per_kind, prompts_seed)):
            items += [(k, i, s, caption, metadata) for s in range(seeds_per_prompt)]
    shown_per_kind = -(-grid // len(KINDS)) if grid and grid_path is not None else 0
    scores: list[float] = []
    shown: list[tuple[torch.Tensor, str]] = []
    kept: list[np.ndarray] = []
    runner = RewardRunner({"geneval": ToyGenEvalReward()}, workers=1)
    was_training, previous = policy.training, getattr(policy, "kernel", None)
    policy.eval()
    if kernel is not None:
        policy.kernel = type(policy).check_kernel(kernel)  # (the families step with their `kernel`)
    try:
        with torch.random.fork_rng(devices=[]):
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                trajectories = rollout(
                    policy,
                    _InOrder([(caption, metadata) for *_, caption, metadata in batch]),
                    runner,
                    batch_size=len(batch),
                    num_batches=1,
                    num_steps=num_steps,
                    guidance_scale=guidance_scale,
                    stream=_RowStreams([stream_seed(seed, k, i, s) for k, i, s, *_ in batch]),  # type: ignore[arg-type]
                    rng=random.Random(0),
                    progress=progress,
                    description=f"geneval {start}/{len(items)}",
                )
                batch_scores = runner.collect()["geneval"].tolist()
                scores += batch_scores
                if keep_images:
                    kept.append(to_uint8(trajectories.images))
                for row, ((k, i, s, caption, _), score) in enumerate(zip(batch, batch_scores)):
                    if s == 0 and i < shown_per_kind:
                        verdict = "right" if score == 1 else "wrong"
                        shown.append((trajectories.images[row], f'"{caption}" | {KINDS[k]} {verdict}'))
    finally:
        runner.close()
        if kernel is not None:
            policy.kernel = previous
        policy.train(was_training)
    per_prompt: list[dict[str, Any]] = []
    for (k, i, s, caption, _), score in zip(items, scores, strict=True):
        if s == 0:
            per_prompt.append({"kind": KINDS[k], "prompt": caption, "scores": []})
        per_prompt[-1]["scores"].append(score)
    kinds = {}
    for kind in KINDS:
        rows = [p for p in per_prompt if p["kind"] == kind]
        kinds[kind] = accuracy([v for p in rows for v in p["scores"]], [p["prompt"] for p in rows for _ in p["scores"]])
    overall = {
        "accuracy": float(np.mean([kinds[k]["accuracy"] for k in KINDS])),
        "se": math.sqrt(sum(kinds[k]["se"] ** 2 for k in KINDS)) / len(KINDS),
        "n": len(items),
    }
    if shown:
        save_image_grid(torch.stack([image for image, _ in shown]), [text for _, text in shown], Path(grid_path))
    active = kernel if kernel is not None else previous
    settings = {
        "per_kind": per_kind,
        "seeds_per_prompt": seeds_per_prompt,
        "num_steps": num_steps,
        "guidance_scale": guidance_scale,
        "kernel": repr(active),  # (the kernels are dataclasses: DDIMKernel(eta=1.0))
        "seed": seed,
        "prompts_seed": prompts_seed,
        "resolution": int(trajectories.images.shape[-1]),
    }
    result = {"kinds": kinds, "overall": overall, "settings": settings, "prompts": per_prompt}
    if keep_images:
        result["images"] = np.concatenate(kept)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The result as an aligned table: each kind's accuracy, its standard error (clustered by prompt)
    and its number of images, then the overall score (the mean of the six)."""
    rows = [(kind, result["kinds"][kind]) for kind in KINDS] + [("overall", result["overall"])]

    def percent(value: float) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"

    lines = [f"{'kind':<14}{'accuracy':>9}{'s.e.':>10}{'n':>7}"]
    for name, row in rows:
        lines.append(f"{name:<14}{percent(row['accuracy']):>9}{'± ' + percent(row['se']):>10}{row['n']:>7}")
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------------------------------
def _strict(value: Any) -> Any:
    """`value` with NaN as None, for strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def _policy_and_config(args: argparse.Namespace):
    """(policy, its run's config, the kernel to sample with or None for the policy's own, output dir)."""
    from omegaconf import OmegaConf

    from rlft.config import build, compose

    if args.checkpoint is None:
        from rlft.train import build_policy, validate

        cfg = compose(args.overrides)
        validate(cfg)
        from datetime import datetime

        out = Path(str(cfg.output_root)) / "geneval" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        return build_policy(cfg), cfg, None, out
    from rlft.export import PATH_HINT, checkpoint_path, rebuild_policy
    from rlft.resume import read_checkpoint, run_dir_of

    for override in args.overrides:
        if not override.startswith("sample.") or "=" not in override:
            raise ConfigError(
                f"{override}: with --checkpoint the run's own config is evaluated; only sample.* keys may change "
                "(e.g. sample.num_steps=20), and a model's overrides go without --checkpoint"
            )
    path = checkpoint_path(args.checkpoint)
    checkpoint = read_checkpoint(path, str(path), fix=PATH_HINT)
    cfg = OmegaConf.merge(OmegaConf.create(checkpoint["rlft"]["config"]), OmegaConf.from_dotlist(args.overrides))
    kernel = build(cfg.sample.kernel, "sample.kernel")
    policy = rebuild_policy(checkpoint, str(path), args.base)
    run_dir = run_dir_of(path)
    out = run_dir / ("geneval" if path.name == "last.ckpt" else f"geneval-{path.stem}")
    return policy, cfg, kernel, out


def main(args: argparse.Namespace) -> None:
    from contextlib import nullcontext

    try:
        import torch

        from rlft.images import write_json_atomically
        from rlft.quiet import no_library_progress_bars, quiet_known_warnings

        quiet_known_warnings()
        no_library_progress_bars()
        policy, cfg, kernel, out = _policy_and_config(args)
        out = Path(args.out).expanduser() if args.out else out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: is a file; give a directory to write the evaluation to")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        policy.to(device)
        precision = str(cfg.hardware.get("precision", "32-true"))
        mixed = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        with torch.autocast(device.type, dtype=mixed) if mixed else nullcontext():
            result = evaluate_geneval(
                policy,
                args.per_kind,
                args.seeds_per_prompt,
                num_steps=int(cfg.sample.num_steps),
                guidance_scale=float(cfg.sample.guidance_scale),
                batch_size=args.batch_size,
                seed=args.seed,
                kernel=kernel,
                grid=args.grid,
                grid_path=out / "geneval.png",
                progress=sys.stderr.isatty(),
            )
    except RlftError as error:
        from rlft.errors import exit_with

        exit_with(error)
    result["settings"].update(
        checkpoint=None if args.checkpoint is None else str(args.checkpoint),
        overrides=list(args.overrides),
        model=str(cfg.model.components.get("_target_", "")),
        device=str(device),
    )
    table = format_table(result)
    write_json_atomically(_strict(result), out / "geneval.json")
    (out / "geneval.txt").write_text(table + "\n")
    s = result["settings"]
    print(
        f"GenEval on the compositional toy world: {s['per_kind']} prompts per kind x {s['seeds_per_prompt']} seeds, "
        f"{s['num_steps']} steps, guidance {s['guidance_scale']}, {s['kernel']}, {s['resolution']} px"
    )
    print(table)
    print("(s.e.: standard error, clustered by prompt; overall: the mean of the six kinds)")
    print(f"wrote {out / 'geneval.json'}" + (f" and {out / 'geneval.png'}" if args.grid else ""))


if __name__ == "__main__":
    from rlft.toy.geneval import main as _main  # the importable module's classes, not __main__'s copies

    _main(ARGUMENTS)


# -- in a run (rlft/module.py: before the first update, after the last, every cfg.geneval.every epochs) --
def check_kernel_setting(kernel: Any) -> None:
    """conf `geneval.kernel` is euler or run (rlft.validation checks it before anything loads)."""
    if kernel not in ("euler", "run"):
        raise ConfigError(f"geneval.kernel={kernel}: give euler (a flow model's ODE) or run (the run's own kernel)")


def geneval_scores(policy: DiffusionPolicy, settings: Any, sample: Any, grid_path: Path | None = None):
    """The run's toy_geneval (conf `geneval`, at the run's sampler steps and guidance; `settings.kernel`
    "euler": the deterministic ODE, "run": the run's own kernel) as ({"geneval_<kind>": accuracy, ...,
    "geneval_overall": ...}, the per-kind table)."""
    from rlft.kernels.choice import EulerKernel

    check_kernel_setting(settings.kernel)
    ode = settings.kernel == "euler" and policy.parametrisation == "flow"
    result = evaluate_geneval(
        policy,
        per_kind=settings.per_kind,
        seeds_per_prompt=settings.seeds_per_prompt,
        num_steps=sample.num_steps,
        guidance_scale=sample.guidance_scale,
        batch_size=settings.batch_size,
        seed=settings.seed,
        kernel=EulerKernel() if ode else None,
        grid=settings.grid if grid_path else 0,
        grid_path=grid_path,
    )
    scores = {f"geneval_{kind}": result["kinds"][kind]["accuracy"] for kind in KINDS}
    scores["geneval_overall"] = result["overall"]["accuracy"]
    scores["geneval_overall_se"] = result["overall"]["se"]
    return scores, format_table(result)


def side_by_side(before: dict[str, float], after: dict[str, float]) -> str:
    """Before/after accuracies per kind (geneval_scores' keys) and their change, in points."""
    lines = [f"{'kind':<14}{'before':>8}{'after':>8}{'change':>9}"]
    for kind in (*KINDS, "overall"):
        key = f"geneval_{kind}"
        if key in before and key in after:
            b, a = 100 * before[key], 100 * after[key]
            lines.append(f"{kind:<14}{b:>7.1f}%{a:>7.1f}%{a - b:>+8.1f}")
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    se = after.get("geneval_overall_se")
    if se is not None and not math.isnan(se):  # (NaN: one prompt per kind, no spread to measure)
        lines.append(f"(overall s.e. {100 * se:.1f} points per measurement)")
    return "\n".join(lines)

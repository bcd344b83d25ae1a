"""`python -m rlft.export RUN_DIR_OR_CKPT [--out DIR] [--push-to-hub REPO [--private]]`: diffusers-format
weights and a Hugging Face model card from any checkpoint of a run.

A run directory means its checkpoints/last.ckpt (a finished run's final weights, or a killed run's
last finished epoch); `RUN/checkpoints/epoch=0003.ckpt` exports that epoch. Checkpoints hold only
the trainable weights and the run's resolved config, so the policy is rebuilt from the config and
given those weights, then written by the policy's own export (the same code as the end of a run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.errors import ConfigError, RlftError, exit_with

if TYPE_CHECKING:  # torch and diffusers load only once the input is known to be good
    from rlft.policy import Policy

CARD = "README.md"
CONFIG = "rlft_config.yaml"
# What an export holds (Policy.export's layout, the config and the card): a directory with any of
# them is a previous export, whose files are replaced, not mixed with the new ones.
EXPORT_ENTRIES = ("lora", "pipeline", "base", "BASE_MODEL.txt", CONFIG, CARD)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a run directory holds from its start, before its first checkpoint.
RUN_FILES = (".hydra", "__main__.log", "metrics.csv")
PATH_HINT = "give a run directory (outputs/runs/...) or a checkpoint in its checkpoints/ (last.ckpt, epoch=0003.ckpt)"


class HubError(RlftError):
    """The export could not be published to the Hugging Face Hub."""


@dataclass
class RunRecord:
    """What the model card tells about the weights: the run's resolved config and the metrics the
    checkpoint (or the finished run) recorded."""

    config: dict[str, Any]
    epochs_trained: int
    history: list[dict[str, float]] = field(default_factory=list)
    showcase: dict[str, dict[str, float]] = field(default_factory=dict)  # "before"/"after": mean rewards
    run_dir: Path | None = None
    checkpoint: Path | None = None


# -- the export (also the end of a run: rlft.train) ----------------------------------------------------
def export_run(policy: Policy, record: RunRecord, directory: str | Path, repo_id: str | None = None) -> Path:
    """Write the policy's weights (Policy.export), the run's resolved config and the model card, in
    place of a previous export there. `repo_id`: the Hub repository the card's example loads from."""
    import shutil

    from omegaconf import OmegaConf

    for entry in (Path(directory) / name for name in EXPORT_ENTRIES):
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
    directory = policy.export(directory)
    OmegaConf.save(OmegaConf.create(record.config), directory / CONFIG)
    (directory / CARD).write_text(model_card(record, directory, policy.source, repo_id))
    return directory


def base_model_id(config: dict, source: str | None) -> str | None:
    """The hub id of the base model, when it has one: the source loaded, or the hub id of a model
    loaded from a local copy (model.path). None for a model built offline or a local-only one."""
    for candidate in (source, config.get("model", {}).get("components", {}).get("hub_id")):
        if isinstance(candidate, str) and HUB_ID.fullmatch(candidate) and not Path(candidate).expanduser().exists():
            return candidate
    return None


def _choices(run_dir: Path | None) -> dict[str, str]:
    """The config options the run was composed of (algorithm: ddpo, ...), as Hydra recorded them."""
    record = _hydra_record(run_dir, "hydra.yaml")
    choices = record.get("hydra", {}).get("runtime", {}).get("choices", {}) if isinstance(record, dict) else {}
    return {str(k): str(v) for k, v in choices.items() if v is not None} if isinstance(choices, dict) else {}


def _hydra_record(run_dir: Path | None, name: str) -> Any:
    """A file of the run's .hydra/ record as plain values; None when there is none or it is damaged
    (which only costs the card the option names or the command, not the export)."""
    import yaml

    path = None if run_dir is None else run_dir / ".hydra" / name
    if path is None or not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _component(config: dict, group: str, choices: dict[str, str]) -> tuple[str, str]:
    """(option name, class) of a config group: ("ddpo", "rlft.algorithms.DDPO")."""
    target = str(config.get(group, {}).get("_target_", "?"))
    # Without Hydra's record (a run trained in-process), the class in snake case: jpeg_compressibility.
    name = choices.get(group) or re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", target.rsplit(".", 1)[-1]).lower()
    return name, target


def reproduce_command(run_dir: Path | None) -> str | None:
    """`python -m rlft <the run's overrides>` from Hydra's record of them, without the resume setting
    (a rerun is a new run); None when the run left no record (not started by `python -m rlft`)."""
    overrides = _hydra_record(run_dir, "overrides.yaml")
    if not isinstance(overrides, list):
        return None
    kept = [str(o) for o in overrides if not str(o).lstrip("+~").startswith("resume=")]
    return " ".join(["python -m rlft", *map(shlex.quote, kept)])


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


def _rewards_section(record: RunRecord, reward: str) -> list[str]:
    lines = ["## Rewards", ""]
    if record.history:
        last = record.history[-1]
        epoch = int(last.get("epoch", record.epochs_trained - 1))
        lines.append(f"The samples of the last epoch trained (epoch {epoch}, {int(last.get('samples', 0))} images):")
        lines += ["", "| metric | mean | std |", "|---|---|---|"]
        lines.append(f"| reward ({reward}) | {_number(last.get('reward_mean'))} | {_number(last.get('reward_std'))} |")
        for key in sorted(k for k in last if k.startswith("eval_") and k.endswith("_mean")):
            std = last.get(key.removesuffix("_mean") + "_std", "")
            lines.append(f"| {key.removesuffix('_mean')} | {_number(last[key])} | {_number(std)} |")
    else:
        lines.append("No epoch's rewards were recorded.")
    before, after = record.showcase.get("before", {}), record.showcase.get("after", {})
    if before or after:
        samples = record.config.get("showcase", {}).get("samples", "?")
        seed = record.config.get("showcase", {}).get("seed", "?")
        lines += [
            "",
            f"Showcase: {samples} images of the same prompts and noise (seed {seed}), sampled before the first "
            + "update and after the last:",
            "",
            "| reward | before | after |",
            "|---|---|---|",
        ]
        for key in sorted(set(before) | set(after), key=lambda k: (k != "reward_mean", k)):
            label = f"reward ({reward})" if key == "reward_mean" else key.removesuffix("_mean")
            lines.append(f"| {label} | {_number(before.get(key, '-'))} | {_number(after.get(key, 'not recorded'))} |")
        if not after:
            lines += ["", "(The after-training showcase runs at the end of a run; this checkpoint is from before it.)"]
    return lines


@dataclass
class FamilyUse:
    """How the card's example loads and calls a model family's pipeline."""

    pipeline: str = "DiffusionPipeline"  # the diffusers class the example loads with
    denoiser: str = "UNet"  # the network trained, for "full fine-tuning of the ..."
    load_kwargs: str = ""  # from_pretrained's extra arguments, e.g. ", text_encoder_3=None"
    call_kwargs: str = ""  # the generation call's, e.g. ", height=512, width=512"


def family_use(config: dict) -> FamilyUse:
    """The card's example for the run's model family (model.policy._target_): SD 1.x's pipeline as
    DiffusionPipeline resolves it; SD3's as StableDiffusion3Pipeline with the run's T5 choice, image
    size, T5 sequence length and guidance, so that the example samples what the run trained."""
    from omegaconf import OmegaConf

    from rlft.policy import policy_class

    model = config.get("model", {})
    try:
        family = policy_class(OmegaConf.create(model))
    except RlftError:  # a family this rlft does not have: the generic loader
        return FamilyUse()
    if family.family != "SD3":
        return FamilyUse(denoiser={"unet": "UNet"}.get(family.denoiser_name, family.denoiser_name))
    options = model.get("policy", {})
    load = "" if model.get("components", {}).get("t5", True) else ", text_encoder_3=None, tokenizer_3=None"
    call = []
    if options.get("resolution") is not None:
        call.append(f"height={options['resolution']}, width={options['resolution']}")
    length = options.get("max_sequence_length")
    if length is not None and length != 256:  # the pipeline's default; without T5 it sizes the zeros too
        call.append(f"max_sequence_length={length}")
    guidance = config.get("sample", {}).get("guidance_scale")
    if guidance is not None:
        call.append(f"guidance_scale={guidance}")
    return FamilyUse("StableDiffusion3Pipeline", "transformer", load, "".join(f", {c}" for c in call))


def _loading_snippet(
    directory: Path,
    lora: bool,
    base_id: str | None,
    source: str | None,
    repo_id: str | None,
    prompt: str,
    use: FamilyUse | None = None,
) -> list[str]:
    use = use or FamilyUse()
    cls, kwargs = use.pipeline, use.load_kwargs
    lines = ["```python", f"from diffusers import {cls}"]
    if repo_id is not None:
        lines += ["from huggingface_hub import snapshot_download", "", f'path = snapshot_download("{repo_id}")']
    else:
        lines += ["", f"path = {str(directory.resolve())!r}  # this export"]
    if not lora:
        lines.append(f'pipe = {cls}.from_pretrained(f"{{path}}/pipeline"{kwargs})')
    elif base_id is not None:
        lines.append(f'pipe = {cls}.from_pretrained("{base_id}"{kwargs})')
    elif (directory / "base").is_dir():
        lines.append(f'pipe = {cls}.from_pretrained(f"{{path}}/base"{kwargs})  # the base model, saved with the export')
    else:  # a local base pipeline that only this machine has (BASE_MODEL.txt names it)
        lines.append(f"pipe = {cls}.from_pretrained({str(source)!r}{kwargs})  # the base model")
    if lora:
        lines.append('pipe.load_lora_weights(f"{path}/lora")')
    lines += [f"image = pipe({prompt!r}{use.call_kwargs}).images[0]", "```"]
    return lines


def _a_prompt(config: dict) -> str:
    """A prompt of the run's own distribution for the example (a model trained on colored shapes
    cannot draw a cat); a generic one when the prompt source cannot be built here."""
    try:
        import random

        from omegaconf import OmegaConf

        from rlft.config import build

        return build(OmegaConf.create(config["prompt"])).sample(random.Random(0))[0]
    except Exception:  # noqa: BLE001 (any prompt source's failure here only costs the example its prompt)
        return "a photo of a cat"


def kernel_description(kernel: dict) -> str:
    """`DDIMKernel` (eta 1.0): the sampler's kernel and its parameters, for the card."""
    name = str(kernel.get("_target_", "?")).rpartition(".")[2]
    parameters = ", ".join(f"{k} {v}" for k, v in kernel.items() if k != "_target_")
    return f"`{name}`" + (f" ({parameters})" if parameters else "")


def model_card(record: RunRecord, directory: Path, source: str | None, repo_id: str | None = None) -> str:
    """README.md of an export: Hugging Face model-card metadata and what the weights are."""
    from huggingface_hub import ModelCardData

    config = record.config
    lora_config = config.get("model", {}).get("lora")
    lora = lora_config is not None
    base_id = base_model_id(config, source)
    choices = _choices(record.run_dir)
    use = family_use(config)
    algorithm, algorithm_class = _component(config, "algorithm", choices)
    reward, reward_class = _component(config, "reward", choices)
    prompts, prompt_class = _component(config, "prompt", choices)
    tags = ["text-to-image", "diffusers", *(["lora"] if lora else []), "reinforcement-learning", "rlft"]
    tags.append(algorithm.replace("_", "-"))
    data = ModelCardData(
        base_model=base_id, library_name="diffusers", pipeline_tag="text-to-image", tags=tags
    ).to_yaml()

    if base_id is not None:
        base = f"[`{base_id}`](https://huggingface.co/{base_id})"
        if source and source != base_id:
            base += f" (loaded from a local copy, `{source}`)"
    elif source:
        base = f"`{source}` (a local pipeline)"
    else:
        target = config.get("model", {}).get("components", {}).get("_target_", "?")
        base = f"built offline by `{target}` (random weights), saved with the export in `base/`"
    if lora:
        targets = lora_config.get("target_modules", [])  # module names, or one regular expression
        targets = f"`{targets}`" if isinstance(targets, str) else ", ".join(map(str, targets))
        how = f"LoRA (rank {lora_config.get('r')} on {targets})"
    else:
        how = f"full fine-tuning of the {use.denoiser}"
    total = config.get("epochs")
    epochs = f"{record.epochs_trained}" + (f" of the run's {total}" if total and total != record.epochs_trained else "")
    if record.checkpoint is not None:
        epochs += f" (checkpoint `{record.checkpoint.name}`)"
    sample = config.get("sample", {})
    title = (
        f"{algorithm.upper()} ({'LoRA' if lora else 'full fine-tune'}) of {base_id or 'a diffusion model'} on {reward}"
    )
    lines = [
        "---",
        data.rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        "A text-to-image diffusion model fine-tuned with reinforcement learning by rlft.",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | {base} |",
        f"| Fine-tuning | {how} |",
        f"| Algorithm | `{algorithm}` (`{algorithm_class}`) |",
        f"| Reward | `{reward}` (`{reward_class}`) |",
        f"| Prompts | `{prompts}` (`{prompt_class}`) |",
        f"| Epochs trained | {epochs} |",
        f"| Sampler | {kernel_description(sample.get('kernel', {}))}, {sample.get('num_steps', '?')} steps, "
        + f"guidance {sample.get('guidance_scale', '?')} |",
        "",
        *_rewards_section(record, reward),
        "",
        "## Use with diffusers",
        "",
        *_loading_snippet(directory, lora, base_id, source, repo_id, _a_prompt(config), use),
        "",
        "## Reproduce",
        "",
    ]
    command = reproduce_command(record.run_dir)
    if command is not None:
        lines += ["```bash", command, "```", ""]
    else:
        lines += ["The run's command line was not recorded (it was not started by `python -m rlft`).", ""]
    lines.append(f"The run's full resolved configuration is in `{CONFIG}`.")
    files = ["lora/pytorch_lora_weights.safetensors: the adapters"] if lora else ["pipeline/: the whole pipeline"]
    if (directory / "base").is_dir():
        files.append("base/: the base pipeline")
    lines += ["", "## Files", "", *(f"- {f}" for f in files), f"- {CONFIG}: the run's configuration", ""]
    return "\n".join(lines)


# -- from a checkpoint -----------------------------------------------------------------------------------
def checkpoint_path(given: str | Path) -> Path:
    """The checkpoint a path names: a .ckpt file, or a run directory's checkpoints/last.ckpt."""
    path = Path(given).expanduser()
    if not path.exists():
        raise ConfigError(f"{given}: no such file or directory; {PATH_HINT}")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    last = folder / "last.ckpt"
    if last.is_file():
        return last
    others = sorted(p.name for p in folder.glob("*.ckpt"))
    if others:
        raise ConfigError(f"{given}: no last.ckpt in {folder}; give one of its checkpoints: {', '.join(others)}")
    if folder is not path or any((path / name).exists() for name in RUN_FILES):
        raise ConfigError(
            f"{given}: the run has no checkpoint yet (no epoch has finished: {folder} has no .ckpt); export it once "
            "one has, or give another run"
        )
    raise ConfigError(f"{given}: not an rlft run directory (it has no checkpoints/ folder); {PATH_HINT}")


def default_out(checkpoint: Path) -> Path:
    """RUN/export for a run's last.ckpt (where the end of the run exports), RUN/export-epoch=0003 for
    an earlier checkpoint."""
    from rlft.resume import run_dir_of

    run_dir = run_dir_of(checkpoint)
    return run_dir / ("export" if checkpoint.name == "last.ckpt" else f"export-{checkpoint.stem}")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a directory to write the export to")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in EXPORT_ENTRIES):
        raise ConfigError(f"--out {out}: a directory with other files in it; give a new or empty directory")


def _showcase(checkpoint_state: dict, run_dir: Path, epochs_trained: int) -> dict:
    """The checkpoint's showcase scores, with the run's "after" scores when the checkpoint is the
    run's final one (the after-showcase runs once the last checkpoint is written)."""
    scores = dict(checkpoint_state.get("showcase", {}))
    saved, config_file = run_dir / "showcase.json", run_dir / "config.yaml"
    if "after" not in scores and saved.is_file() and config_file.is_file():
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            finished = int(OmegaConf.load(config_file).epochs) == epochs_trained
            after = json.loads(saved.read_text()).get("after")
        except (OSError, ValueError, AttributeError, TypeError, OmegaConfBaseException):  # a damaged record: no "after"
            return scores
        if finished and after:
            scores["after"] = after
    return scores


def rebuild_policy(checkpoint: dict, label: str, base: str | None = None) -> Policy:
    """The trained policy: the checkpoint's model rebuilt from its config, given its trainable weights.
    `base`: a local copy of the base model, for a run whose model is not available here."""
    from omegaconf import OmegaConf

    from rlft.config import build
    from rlft.policy import policy_class

    config = checkpoint["rlft"]["config"]
    components = dict(config["model"]["components"])
    if base is not None:
        if "path" not in components:
            raise ConfigError(
                f"--base {base}: this run's model is built by {components.get('_target_')}, which takes no path; "
                "leave --base out"
            )
        components["path"] = base
    try:
        built = build(OmegaConf.create(components))
    except ConfigError as error:
        raise ConfigError(f"{label}: the run's base model cannot be loaded here: {error.at('--base')}") from error
    from rlft.train import family_options

    model = OmegaConf.create(config["model"])
    family = policy_class(model)
    policy = family(
        built,
        lora=config["model"]["lora"],
        frozen_dtype=config.get("hardware", {}).get("frozen_dtype", "float32"),
        **family_options(model, family),
    )
    weights = {k.removeprefix("policy."): v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    trainable = {name for name, param in policy.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(trainable - weights.keys()), sorted(weights.keys() - policy.state_dict().keys())
    if missing or unexpected:
        shown = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise ConfigError(
            f"{label}: its weights do not fit the model its config builds ({shown}); export it with the rlft "
            "version that wrote it"
        )
    try:
        policy.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise ConfigError(f"{label}: its weights do not fit the model its config builds ({str(error)[:300]})") from None
    return policy


def export_checkpoint(
    given: str | Path, out: str | Path | None = None, base: str | None = None, repo_id: str | None = None
) -> tuple[Path, RunRecord]:
    """Export the checkpoint `given` names (rlft.export's command line, in-process); returns the
    export directory and what its card tells."""
    from rlft.resume import read_checkpoint, run_dir_of

    path = checkpoint_path(given)
    out = Path(out).expanduser() if out is not None else default_out(path)
    _check_out(out)
    checkpoint = read_checkpoint(path, str(path), fix=PATH_HINT)
    run_dir = run_dir_of(path)
    epochs_trained = int(checkpoint["epoch"]) + 1
    policy = rebuild_policy(checkpoint, str(path), base)
    state = checkpoint["rlft"]
    record = RunRecord(
        config=state["config"],
        epochs_trained=epochs_trained,
        history=[dict(h) for h in state.get("history", [])],
        showcase=_showcase(state, run_dir, epochs_trained),
        run_dir=run_dir,
        checkpoint=path,
    )
    return export_run(policy, record, out, repo_id), record


# -- the Hugging Face Hub --------------------------------------------------------------------------------
def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def check_hub(repo_id: str) -> None:
    """Fail before the export (minutes for a large model) when the push cannot succeed: offline, no
    token, or the Hub unreachable or refusing the token."""
    from huggingface_hub import HfApi, get_token

    flag = f"--push-to-hub {repo_id}"
    if not HUB_ID.fullmatch(repo_id):
        raise ConfigError(f"{flag}: not a repository id; give it as <user or organization>/<name>")
    if _offline():
        raise HubError(
            f"{flag}: HF_HUB_OFFLINE=1 is set, so nothing can be uploaded to the Hugging Face Hub; unset it on a "
            "machine with internet access, or leave --push-to-hub out to export locally only"
        )
    if get_token() is None:
        raise HubError(
            f"{flag}: no Hugging Face token (HF_TOKEN is not set and no `hf auth login` was done); log in with "
            "`hf auth login` or set HF_TOKEN to a token with write access"
        )
    try:
        HfApi().whoami()
    except Exception as error:  # noqa: BLE001 (httpx, requests or hub errors: each says why in one line)
        raise HubError(f"{flag}: {_hub_failure(error)}") from None


def _hub_failure(error: Exception) -> str:
    status = getattr(getattr(error, "response", None), "status_code", None)
    reason = (str(error).splitlines() or [""])[0][:200]
    if status in (401, 403):
        return f"the Hugging Face Hub refused the token ({status}: {reason}); log in again with `hf auth login` or set HF_TOKEN to a token with write access"
    if status is not None:
        return f"the Hugging Face Hub answered {status} ({reason})"
    return (
        f"cannot reach the Hugging Face Hub ({type(error).__name__}: {reason}); run where huggingface.co is "
        "reachable (HF_ENDPOINT for a mirror), or leave --push-to-hub out to export locally only"
    )


def push(directory: Path, repo_id: str, private: bool, commit_message: str) -> str:
    """create_repo + upload_folder of the export; returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message=commit_message, repo_type="model")
    except Exception as error:  # noqa: BLE001
        raise HubError(
            f"--push-to-hub {repo_id}: {_hub_failure(error)}; the export is in {directory}, rerun the command to push it"
        ) from None
    return str(url)


# -- command line ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rlft.export",
        description="Write diffusers-format weights and a model card (README.md) from an rlft checkpoint.",
    )
    parser.add_argument("path", help="a run directory (its checkpoints/last.ckpt) or a checkpoint (.ckpt)")
    parser.add_argument("--out", help="the export directory (default: RUN/export, or RUN/export-epoch=NNNN)")
    parser.add_argument(
        "--base", help="a local copy of the base model (diffusers pipeline directory), when the run's is not here"
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="then publish the export to this Hugging Face repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        parser.error("--private applies to --push-to-hub REPO; add it or leave --private out")
    return args


def _quiet() -> None:
    """Keep the library notices about building and saving models (none says anything about this
    export) off the terminal, so that the export's own line and its errors stand out."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars

    warnings.filterwarnings("ignore")
    diffusers_logging.set_verbosity_error()  # (diffusers sets its loggers' level when first imported)
    diffusers_logging.disable_progress_bar()
    disable_progress_bars()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        checkpoint_path(args.path)  # a bad path is reported before the Hub is asked anything
        if args.push_to_hub:
            check_hub(args.push_to_hub)
        _quiet()
        directory, record = export_checkpoint(args.path, args.out, args.base, args.push_to_hub)
        print(f"exported epoch {record.epochs_trained - 1} of {record.checkpoint} to {directory}")
        if args.push_to_hub:
            url = push(directory, args.push_to_hub, args.private, f"rlft export of {record.epochs_trained} epochs")
            print(f"pushed to {url}")
    except RlftError as error:
        exit_with(error)


if __name__ == "__main__":
    main(sys.argv[1:])

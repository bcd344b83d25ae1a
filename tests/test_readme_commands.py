"""Every command in README.md works.

Each `python -m rlft ...` line of the README (code blocks and inline code, `\\` continuations
joined, environment prefixes kept, the few placeholders below substituted) is composed by the real
command line, `python -m rlft <args> --cfg all` in a subprocess, and the composed config is resolved
and validated. A sweep (`-m`) is composed as its first job that way and its other jobs (the sweeps
zipped, so that every value is in one job) with Hydra's compose API. A command this machine can run
(CPU, no weights, no network; `needs` says what the others lack) then trains for real on exactly the
composed config, shortened to one epoch of 4 samples of 2 steps. Sub-modules: `rlft.serve` and
`rlft.pretrain` are composed with the compose API, `rlft.plot` plots a real run, the argparse ones
(`rlft.plot`, `rlft.bench`) show their usage (`make bench` runs in tests/test_bench.py); every
`make` target named exists.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose as compose_api
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rlft.config import CONFIG_DIR
from rlft.train import train, validate

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOY_PIPELINE = ROOT / "rlft" / "toy" / "pipeline"

# The README's placeholders and what stands in for them here. Everything else is composed as written
# (rewardhost, my-pod and the like are only strings to the config); the example run directory of
# `resume=outputs/runs/...` is made before that command runs.
PLACEHOLDERS = {
    "<that pipeline>": str(TOY_PIPELINE),  # a pipeline made by python -m rlft.pretrain, as the shipped one was
    "<pipeline>": str(TOY_PIPELINE),
    "/data/sd15": str(TOY_PIPELINE),  # a local diffusers pipeline directory (only composed: hardware=multi_gpu)
}

# Appended to a command that runs here: one epoch of 4 samples of 2 steps (two prompts of 2 images:
# any group size divides it, GRPO's too), one optimizer step, no toy_geneval tables.
SHORT = [
    "epochs=1",
    "sample.num_steps=2",
    "sample.batch_size=4",
    "sample.num_batches_per_epoch=1",
    "sample.images_per_prompt=2",
    "geneval.per_kind=0",
    "train.batch_size=4",
    "train.gradient_accumulation_steps=1",
    "train.num_inner_epochs=1",
    "showcase.samples=0",
    "num_checkpoints=1",
]

# The demos run on any CPU by design (`make run` is the first).
DEMOS = {"python -m rlft", "python -m rlft model=tiny"}

# Rewards that load official weights (their `_tiny` twins are built offline).
LEARNED_REWARDS = {"aesthetic", "pickscore", "hpsv2", "imagereward", "llava_bertscore"}


@dataclass(frozen=True)
class Command:
    module: str  # "rlft", "rlft.serve", ...
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        words = [f"{name}={value}" for name, value in self.env] + ["python", "-m", self.module, *self.args]
        return shlex.join(words)


def parse(line: str) -> Command | None:
    """The `python -m rlft...` command in one shell line, or None."""
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    words = shlex.split(line, comments=True)
    for i in range(len(words) - 2):
        if Path(words[i]).name == "python" and words[i + 1] == "-m" and re.fullmatch(r"rlft(\.\w+)?", words[i + 2]):
            prefix = words[:i]
            if not all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", word) for word in prefix):
                return None
            env = tuple(tuple(word.split("=", 1)) for word in prefix)
            return Command(words[i + 2], tuple(words[i + 3 :]), env)
    return None


FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`]+)`")


def shell_lines(text: str) -> list[str]:
    """The README's shell lines: those of its code blocks (continuations joined), then its inline code
    spans (a span may wrap over a line break)."""
    lines = []
    for block in FENCED.findall(text):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    lines += [" ".join(span.split()) for span in INLINE.findall(FENCED.sub("", text))]
    return lines


def readme_commands() -> list[Command]:
    commands = [parse(line) for line in shell_lines(README.read_text()) if re.search(r"python -m rlft\b", line)]
    return list(dict.fromkeys(c for c in commands if c is not None))


def jobs(args: tuple[str, ...]) -> list[list[str]]:
    """The jobs of a command: itself, or for a sweep (-m) its jobs with the sweeps zipped (job i
    takes the i-th value of each sweep, or its last), so that every value is in one job."""
    if "-m" not in args and "--multirun" not in args:
        return [list(args)]
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = {i: list(o.sweep_string_iterator()) for i, o in enumerate(parsed) if o.is_sweep_override()}
    count = max((len(values) for values in sweeps.values()), default=1)
    return [
        [
            f"{o.get_key_element()}={sweeps[i][min(j, len(sweeps[i]) - 1)]}" if i in sweeps else overrides[i]
            for i, o in enumerate(parsed)
        ]
        for j in range(count)
    ]


def cli(command: Command, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` with the command's environment prefix."""
    return subprocess.run(
        [sys.executable, "-m", command.module, *args],
        cwd=cwd,
        env={**env, **dict(command.env), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def compose(command: Command, args: list[str], cwd: Path) -> tuple[DictConfig, DictConfig]:
    """The job config (resolved) and the Hydra config that `python -m <module> <args>` composes."""
    result = cli(command, [*args, "--cfg", "all"], cwd, dict(os.environ))
    assert result.returncode == 0, f"`{command}` does not compose:\n{result.stderr[-3000:]}"
    cfg = OmegaConf.create(result.stdout)
    hydra = cfg.pop("hydra")
    OmegaConf.resolve(cfg)
    return cfg, hydra


def compose_in_process(config_name: str, args: list[str]) -> DictConfig:
    """What Hydra's compose API makes of the same overrides (cheaper than a process)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose_api(config_name, overrides=args)
    OmegaConf.resolve(cfg)
    return cfg


def _hub_ids(node) -> list[str]:
    """Hub ids the config would download: nodes with a hub_id and no existing local path."""
    found = []
    if isinstance(node, dict):
        path = node.get("path")
        if "hub_id" in node and not (path and Path(str(path)).expanduser().is_dir()):
            found.append(node["hub_id"])
        for value in node.values():
            found += _hub_ids(value)
    elif isinstance(node, list):
        for value in node:
            found += _hub_ids(value)
    return found


def needs(cfg: DictConfig, hydra: DictConfig, env: dict[str, str]) -> str | None:
    """What a composed run needs that this machine lacks (None: it runs here)."""
    choices = hydra.runtime.choices
    if choices.hardware != "cpu":
        return f"hardware={choices.hardware} ({cfg.hardware.accelerator})"
    if choices["hydra/launcher"] != "basic":
        return f"the {choices['hydra/launcher']} launcher's machines"
    if choices.get("hparams_search"):
        return "a whole Optuna search (tests/test_sweep.py runs a 3-trial one)"
    learned = [name for name in [choices.reward, *cfg.eval_rewards] if name in LEARNED_REWARDS]
    if learned:
        return f"the weights of {', '.join(learned)}"
    hub_ids = _hub_ids(OmegaConf.to_container(cfg))
    if hub_ids:
        return f"weights from the hub: {', '.join(hub_ids)}"
    if choices.reward == "remote":
        return "a reward server (tests/test_reward_server.py runs one)"
    if choices.logger == "wandb" and env.get("WANDB_MODE") != "offline":
        return "wandb online"
    return None


def shortened(cfg: DictConfig, *extra: str) -> DictConfig:
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([*SHORT, *extra]))


def first_run(cfg: DictConfig) -> Path:
    """For a resume command (run in an empty directory): the finished one-epoch run it continues, at
    the directory it names, or for resume=auto under output_root."""
    directory = Path(cfg.output_root) / "runs" / "first" if cfg.resume == "auto" else Path(cfg.resume)
    train(shortened(cfg, "resume=null"), directory)
    return directory


COMMANDS = readme_commands()


def test_the_readme_commands_are_found():
    found = {str(c) for c in COMMANDS}
    assert len(COMMANDS) >= 20
    assert {
        "python -m rlft",  # a code block, and inline
        "python -m rlft model=tiny",
        "WANDB_MODE=offline python -m rlft logger=wandb",  # an environment prefix
        (  # a continued line
            "python -m rlft -m hardware=slurm hardware.num_nodes=2 hardware.devices=8 hydra.launcher.partition=gpu "
            "hydra.launcher.account=myproj experiment=tdpo_pickscore"
        ),
        f"python -m rlft model=sd15 model.path={TOY_PIPELINE} hardware=gpu",  # a placeholder
        "python -m rlft.serve reward=llava_bertscore port=8085 host=0.0.0.0",
    } <= found
    assert any(c.env == (("PJRT_DEVICE", "TPU"),) for c in COMMANDS)  # .venv-xla/bin/python


@pytest.fixture(autouse=True)
def _environment_kept():
    """Training in this process may note things in os.environ for its child ranks; no later test's
    processes inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _slow(command: Command) -> bool:
    # wandb's offline service; resume=auto runs the real command line (a second process with torch)
    return "logger=wandb" in command.args or "resume=auto" in command.args


TRAIN_COMMANDS = [
    pytest.param(c, id=str(c), marks=[pytest.mark.slow] if _slow(c) else [])
    for c in COMMANDS
    if c.module == "rlft" and "--help" not in c.args
]


@pytest.mark.parametrize("command", TRAIN_COMMANDS)
def test_readme_command_composes_and_runs_where_it_can(command, tmp_path, monkeypatch):
    environment = dict(os.environ)  # before anything trains in this process
    monkeypatch.chdir(tmp_path)  # the runs' relative paths (output_root=outputs) land here
    first_job, *other_jobs = jobs(command.args)
    cfg, hydra = compose(command, first_job, tmp_path)  # the real command line
    others = [compose_in_process("train", job) for job in other_jobs]  # the sweep's other values
    reason = needs(cfg, hydra, {**environment, **dict(command.env)})
    assert reason is None or str(command) not in DEMOS, f"`{command}` should run on any CPU, but needs {reason}"
    first = first_run(cfg) if reason is None and cfg.resume is not None else None
    for job in [cfg, *others]:
        validate(job)
    if reason is not None:
        return  # composed only
    for name, value in command.env:
        monkeypatch.setenv(name, value)
    if first is None:
        metrics = train(shortened(cfg), tmp_path / "run")
        assert metrics["samples"] == 4 and (tmp_path / "run" / "metrics.csv").is_file()
        return
    # A second epoch of the first run, in its directory. resume=auto looks under output_root only
    # from a run directory Hydra made up, so that one runs as the command line.
    if cfg.resume == "auto":
        result = cli(command, [*command.args, *SHORT, "epochs=2"], tmp_path, environment)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        assert train(shortened(cfg, "epochs=2"), tmp_path / "second")["epoch"] == 1
    assert len((first / "metrics.csv").read_text().splitlines()) == 3  # the header and two epochs
    assert sorted(p.name for p in (tmp_path / "outputs" / "runs").iterdir() if (p / "metrics.csv").exists()) == [
        first.name
    ]


def test_readme_help_lists_the_groups(tmp_path):
    (command,) = [c for c in COMMANDS if c.module == "rlft" and "--help" in c.args]
    result = subprocess.run(
        [sys.executable, "-m", "rlft", *command.args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "== Configuration groups ==" in result.stdout and "experiment: " in result.stdout


# The Hydra sub-modules and their configs. They import torch before Hydra parses the command line
# (over 10 s of CPU each here), so they are composed with Hydra's compose API, as their main would.
HYDRA_SUBMODULES = {"rlft.serve": "serve", "rlft.pretrain": "pretrain"}


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.module in HYDRA_SUBMODULES], ids=str)
def test_readme_hydra_submodule_command_composes(command):
    compose_in_process(HYDRA_SUBMODULES[command.module], list(command.args))


def test_readme_plot_command_plots_a_run(tmp_path, monkeypatch, capsys):
    from rlft.plot import main as plot

    (command,) = [c for c in COMMANDS if c.module == "rlft.plot" and c.args]
    monkeypatch.chdir(tmp_path)
    cfg, _ = compose(Command("rlft", ()), [], tmp_path)
    train(shortened(cfg), tmp_path / "run")
    # RUN=LABEL ... : one run directory with its label
    args = [f"{tmp_path / 'run'}=toy" if a == "RUN=LABEL" else a for a in command.args if a != "..."]
    plot(args)
    assert "saved" in capsys.readouterr().out
    assert (tmp_path / command.args[command.args.index("--out") + 1]).is_file()


ARGPARSE_SUBMODULES = sorted({c.module for c in COMMANDS} - {"rlft", *HYDRA_SUBMODULES})


@pytest.mark.parametrize("module", ARGPARSE_SUBMODULES)
def test_readme_argparse_submodule_shows_its_usage(module, capsys):
    source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
    assert "@hydra.main" not in source, f"{module} is a Hydra program: add it and its config to HYDRA_SUBMODULES"
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and f"python -m {module}" in capsys.readouterr().out


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = {m for line in shell_lines(README.read_text()) for m in re.findall(r"(?:^|\s)make ([\w-]+)", line)}
    assert named and named <= targets, named - targets

"""rlft as a library and as installed programs (docs/library.md): compose + train from Python, a
user's own reward class through hydra.searchpath, the console scripts, and `--help`."""

from __future__ import annotations

import ast
import csv
import importlib.metadata
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlft import compose
from rlft.config import CONFIG_DIR, build, config_dirs, options
from rlft.errors import ConfigError
from tests.conftest import FAST, run_cli

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "library.md"
BIN = Path(sys.executable).parent


def guide_block(language: str, containing: str) -> str:
    """The code block of docs/library.md in `language` that contains `containing`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return block


def user_project(root: Path) -> Path:
    """The guide's own-reward example written out: mypkg/my_reward.py and myconf/reward/my_reward.yaml,
    plus myconf/reward/red.yaml, rlft's Brightness of the red channel (an independent computation of
    the same quantity, on a 0-1 scale)."""
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "my_reward.py").write_text(guide_block("python", "class MeanRed"))
    (root / "myconf" / "reward").mkdir(parents=True)
    (root / "myconf" / "reward" / "my_reward.yaml").write_text(guide_block("yaml", "_target_: mypkg"))
    (root / "myconf" / "reward" / "red.yaml").write_text("_target_: rlft.rewards.Brightness\nchannel: red\n")
    return root / "myconf"


def test_documented_snippet_trains_and_reads_its_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snippet = guide_block("python", "from rlft.train import train")
    namespace: dict = {}
    exec(compile(snippet, str(GUIDE), "exec"), namespace)  # noqa: S102 - the guide's code, as a user runs it
    metrics, final, epochs = namespace["metrics"], namespace["final"], namespace["epochs"]
    assert 0 < metrics["reward_mean"] < 1  # brightness
    assert metrics["eval_jpeg_compressibility_mean"] < 0  # -kB
    assert float(epochs[0]["reward_mean"]) == pytest.approx(metrics["reward_mean"], rel=1e-6)
    assert final == metrics
    run = tmp_path / "runs" / "first"
    assert (run / "config.yaml").is_file() and (run / "export" / "pipeline").is_dir()


def test_compose_takes_overrides_and_config_dirs(tmp_path):
    cfg = compose(["model=tiny", "epochs=3", "sample.num_steps=4"])
    assert (cfg.epochs, cfg.sample.num_steps, cfg.model.components._target_) == (3, 4, "rlft.models.build_offline")
    assert "hydra" not in cfg

    myconf = user_project(tmp_path)
    cfg = compose(["reward=my_reward", "reward.scale=10"], config_dirs=[myconf])
    assert (cfg.reward._target_, cfg.reward.scale) == ("mypkg.my_reward.MeanRed", 10)
    # eval_rewards are loaded outside the defaults list: the directory given is searched for them too
    assert myconf in config_dirs() and {"my_reward", "red", "brightness"} <= set(options("reward"))

    with pytest.raises(
        ConfigError, match=r"^In 'train': Could not find 'reward/nope'; Available options in 'reward': "
    ):
        compose(["reward=nope"])
    with pytest.raises(ConfigError, match="config_dirs: .*missing is not a directory"):
        compose([], config_dirs=[tmp_path / "missing"])
    # a class that cannot be imported is one line that says where Python looks
    with pytest.raises(ConfigError, match=r"^reward._target_=nopkg.MyReward cannot be imported \(ModuleNotFoundError"):
        build(OmegaConf.create({"_target_": "nopkg.MyReward"}), "reward")


def test_own_reward_class_through_hydra_searchpath(tmp_path):
    """No edit inside rlft: the user's config directory and package, `python -m rlft` from their
    directory (which puts it on sys.path)."""
    myconf = user_project(tmp_path)
    args = [f"hydra.searchpath=[file://{myconf}]", "reward=my_reward", "eval_rewards=[red]", "output_root=out", *FAST]
    run_cli(args, cwd=tmp_path)
    (metrics,) = tmp_path.glob("out/runs/*/metrics.csv")
    with metrics.open() as rows:
        (row,) = list(csv.DictReader(rows))
    reward, red = float(row["reward_mean"]), float(row["eval_red_mean"])
    assert 1 < reward <= 100  # MeanRed's 0-100 scale: no reward of rlft's scores there
    assert reward == pytest.approx(100 * red, rel=1e-5)  # and it is the red channel's mean


def test_help_lists_groups_options_examples_and_the_users_options(tmp_path):
    """`rlft --help` (the console script; `python -m rlft` calls the same main) is rlft's own page,
    with the groups read at run time: those of a --config-dir directory are listed too."""
    myconf = user_project(tmp_path)
    start = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "rlft"), "--config-dir", myconf.name, "epochs=7", "--help"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("rlft: reinforcement-learning fine-tuning")
    groups = dict(re.findall(r"^(\w+): (.+)$", text, flags=re.MULTILINE))
    for group in ("algorithm", "reward", "model", "hardware", "logger", "prompt", "experiment"):
        assert set(groups[group].split(", ")) >= {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}, group
    assert {"my_reward", "red", "aesthetic", "jpeg_compressibility"} <= set(groups["reward"].split(", "))
    assert "epochs=7" in text and "sample.num_steps=" in text and "resume=auto" in text  # this composition's values
    for example in (
        "python -m rlft\n",
        "python -m rlft model=sd15 reward=aesthetic hardware=gpu logger=wandb",
        "python -m rlft -m seed=0,1,2",
    ):
        assert example in text
    assert "--hydra-help" in text and "--multirun,-m" in text  # Hydra's flags
    assert seconds < 10, f"--help took {seconds:.1f} s: it should need no torch"  # about 2 s on 2 cores


def test_console_scripts_are_installed():
    scripts = {
        e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts") if e.dist.name == "rlft"
    }
    assert {"rlft": "rlft.__main__:cli", "rlft-serve": "rlft.serve:main", "rlft-plot": "rlft.plot:main"}.items() <= (
        scripts.items()
    )
    for name in ("rlft", "rlft-serve", "rlft-plot"):
        assert (BIN / name).is_file(), f"{name} is not installed: pip install --no-deps -e ."
    plot = subprocess.run([str(BIN / "rlft-plot"), "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert plot.returncode == 0 and "metrics.csv" in plot.stdout
    # rlft-serve --help costs the reward server's imports (about 10 s of CPU): checked here without
    # running it, as a function that takes no arguments (Hydra's main reads sys.argv)
    tree = ast.parse((ROOT / "rlft" / "serve.py").read_text())
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert any("hydra.main" in ast.unparse(d) for d in main.decorator_list)

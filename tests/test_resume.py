"""A run killed after epoch k and resumed reproduces the uninterrupted run's later epochs."""

import csv
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from rlft.train import train
from tests.conftest import compose_config, pinned, run_cli

# Four epochs: killed once epoch 1's checkpoint is written, the resumed run has one or two to match
# (epoch 3, TDPO-R's second reset, among them). Six epochs, all three runs as subprocesses, took 60 s a test
# in the suite; side by side on a loaded machine the six-epoch test took 197 s and this one 147 s.
EPOCHS = 4
ARGS = [
    f"epochs={EPOCHS}",
    "sample.batch_size=4",
    "sample.num_batches_per_epoch=2",
    "sample.num_steps=5",
    "train.batch_size=2",
    "train.gradient_accumulation_steps=2",
    "reward=brightness",
]
COMPARED = {
    "ddpo": ["reward_mean", "reward_std", "loss", "approx_kl", "clipfrac", "ratio"],
    # TDPO-R resets the critic every 2 epochs: the critic, its optimizer, the running moments and
    # the recycler's last mask all have to come back for these to match
    "tdpo_r": ["reward_mean", "reward_std", "loss", "pg_loss", "cf_loss", "value_mean", "dormant_fraction"],
}
ALGORITHM_ARGS = {"ddpo": [], "tdpo_r": ["algorithm=tdpo_r", "algorithm.neuron_reset_freq=2"]}


def metrics(run_dir, algorithm="ddpo"):
    with (run_dir / "metrics.csv").open() as f:
        return [{k: row[k] for k in ["epoch", *COMPARED[algorithm]]} for row in csv.DictReader(f)]


def only_run(root):
    (run_dir,) = (root / "runs").iterdir()
    return run_dir


@pytest.mark.parametrize("algorithm", ["ddpo", "tdpo_r"])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, algorithm):
    args = [*ARGS, *ALGORITHM_ARGS[algorithm]]
    # The uninterrupted run in-process (the command line is what the killed and resumed runs test)
    straight = tmp_path / "straight"
    train(compose_config([*args, f"output_root={straight}"]), straight / "run")
    expected = metrics(straight / "run", algorithm)
    assert [row["epoch"] for row in expected] == [str(e) for e in range(EPOCHS)]

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rlft", *pinned(args), f"output_root={interrupted}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(interrupted.glob("runs/*/checkpoints/epoch=0001.ckpt")):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = only_run(interrupted)
    done = len(metrics(run_dir, algorithm))
    assert done < EPOCHS, "killed too late to test anything"

    result = run_cli([*args, f"output_root={interrupted}", "resume=auto"], cwd=tmp_path)
    assert "resuming" in result.stdout + result.stderr
    # continued in place: the resumed invocation's own Hydra directory holds only its config and log
    others = [d for d in (interrupted / "runs").iterdir() if d != run_dir]
    assert len(others) == 1 and not (others[0] / "metrics.csv").exists()
    assert metrics(run_dir, algorithm) == expected  # every epoch, before and after the kill, identical
    # the export's model card gives the command of the run itself (Hydra's record), not the resume's
    command = " ".join(["python -m rlft", *map(shlex.quote, [*pinned(args), f"output_root={interrupted}"])])
    assert f"```bash\n{command}\n```" in (run_dir / "export" / "README.md").read_text()


def test_resume_from_an_explicit_path_and_a_missing_one(tmp_path, caplog):
    """In-process (the command line's resume path is run above and in test_preemption.py)."""
    from rlft.errors import ConfigError
    from rlft.train import train
    from tests.conftest import compose_config

    small = ["sample.num_steps=2", "sample.num_batches_per_epoch=1", "train.gradient_accumulation_steps=2"]
    run_dir = tmp_path / "first"
    train(compose_config(["epochs=1", *small, f"output_root={tmp_path}"]), run_dir)
    with caplog.at_level("INFO", logger="rlft"):
        train(compose_config(["epochs=2", *small, f"output_root={tmp_path}", f"resume={run_dir}"]), tmp_path / "other")
    assert "resuming" in caplog.text and not (tmp_path / "other").exists()  # continued in its own directory
    assert [row["epoch"] for row in metrics(run_dir)] == ["0", "1"]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    train(compose_config(["epochs=3", *small, f"output_root={tmp_path}", f"resume={checkpoint}"]), tmp_path / "other")
    assert [row["epoch"] for row in metrics(run_dir)] == ["0", "1", "2"]

    with pytest.raises(ConfigError, match=r"resume=/no/such.ckpt: no checkpoint"):
        train(compose_config(["epochs=1", f"output_root={tmp_path / 'x'}", "resume=/no/such.ckpt"]), tmp_path / "x")


def test_resume_auto_without_runs_starts_fresh(tmp_path, caplog):
    from rlft.resume import find_resumption
    from tests.conftest import compose_config

    cfg = compose_config(["epochs=1", f"output_root={tmp_path}", "resume=auto"])
    with caplog.at_level("INFO", logger="rlft"):
        assert find_resumption(cfg, tmp_path / "runs" / "new", search_output_root=True) is None
    assert "starting a new run" in caplog.text


SMALL = ["epochs=2", "sample.num_steps=2", "sample.num_batches_per_epoch=1", "train.gradient_accumulation_steps=2"]


def test_resume_auto_continues_its_own_run_directory_and_never_another(tmp_path):
    """The cluster pattern: fixed run directory, resume=auto, requeue. A finished run elsewhere under
    output_root is not taken; the run directory's own checkpoint is, once it has one."""
    from rlft.resume import RunFinished
    from rlft.train import train
    from tests.conftest import compose_config

    out = tmp_path / "out"
    other = out / "runs" / "finished_long_ago"
    train(compose_config([*SMALL, f"output_root={out}"]), other)
    mine = out / "fixed"
    auto = [*SMALL, f"output_root={out}", "resume=auto"]
    train(compose_config(auto), mine)  # nothing in its directory: a new run there, not `other`
    assert [row["epoch"] for row in metrics(mine)] == ["0", "1"]

    with pytest.raises(RunFinished, match=r"already finished its 2 epochs.*set epochs above 2"):
        train(compose_config(auto), mine)  # a requeue after the end
    train(compose_config([*auto, "epochs=3"]), mine)  # more epochs: continues where it stopped
    assert [row["epoch"] for row in metrics(mine)] == ["0", "1", "2"]
    assert [row["epoch"] for row in metrics(other)] == ["0", "1"]  # untouched


def test_resume_refuses_a_checkpoint_of_another_model_algorithm_or_reward(tmp_path):
    from rlft.errors import ConfigError
    from rlft.train import train
    from tests.conftest import compose_config

    run = tmp_path / "run"
    train(compose_config([*SMALL, f"output_root={tmp_path}"]), run)
    for change, key in [
        ("algorithm=ddpo_sf", "algorithm._target_"),
        ("reward=brightness", "reward._target_"),
        ("model=tiny_lora", "model.lora"),
        ("algorithm.clip_range=0.2", "algorithm.clip_range: 0.0001 -> 0.2"),
    ]:
        cfg = compose_config([*SMALL, "epochs=4", f"output_root={tmp_path}", "resume=auto", change])
        with pytest.raises(ConfigError, match=r"the checkpoint is of another run .*" + key.replace(".", r"\.")):
            train(cfg, run)


def test_resume_of_a_file_that_is_not_an_rlft_checkpoint_is_one_clear_error(tmp_path):
    from rlft.errors import ConfigError
    from rlft.resume import find_resumption
    from tests.conftest import compose_config

    torch_file = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, torch_file)
    text_file = tmp_path / "notes.ckpt"
    text_file.write_text("not a checkpoint")
    for path, problem in [(torch_file, "a torch file but not an rlft checkpoint"), (text_file, "cannot be read")]:
        with pytest.raises(ConfigError, match=f"resume={path}: {problem}"):
            find_resumption(compose_config([f"resume={path}"]), tmp_path / "run", search_output_root=False)

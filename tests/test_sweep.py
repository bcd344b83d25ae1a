"""`python -m rlft -m seed=0,1 ...` really launches both jobs, each in its own directory."""

import csv

from tests.conftest import FAST, run_cli


def test_multirun_over_seeds(tmp_path):
    run_cli(["-m", "seed=0,1", *FAST, f"output_root={tmp_path}"], cwd=tmp_path)
    (sweep,) = (tmp_path / "multirun").iterdir()
    rewards = []
    for job in ("0", "1"):
        with (sweep / job / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1
        rewards.append(rows[0]["reward_mean"])
        assert (sweep / job / "export").is_dir()
        assert "seed=" + job in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    assert rewards[0] != rewards[1]  # different seeds, different samples

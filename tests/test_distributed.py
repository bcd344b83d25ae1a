"""Two DDP processes on CPU (gloo): gathered advantages equal a single-process computation."""

import torch

from rlft.algorithms import DDPO
from rlft.algorithms.base import EpochSamples
from tests.conftest import noise, run_cli

SMALL = [
    "sample.batch_size=2",
    "sample.num_batches_per_epoch=2",
    "sample.num_steps=3",
    "train.batch_size=2",
    "train.gradient_accumulation_steps=2",
    "prompt=simple_animals",
]


def test_two_process_ddp_matches_single_process_advantages(tmp_path):
    dump = tmp_path / "dump"
    result = run_cli(
        [
            "hardware.devices=2",
            "hardware.strategy=ddp",
            "epochs=2",
            f"debug.dump_dir={dump}",
            f"output_root={tmp_path / 'out'}",
            "algorithm.stat_min_count=2",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert noise(result) == []  # both ranks: no warning (rlft/quiet.py knows the distributed ones)

    reference = DDPO(stat_buffer_size=16, stat_min_count=2)  # the run's algorithm settings
    for epoch in range(2):
        ranks = [torch.load(dump / f"advantages_epoch{epoch}_rank{r}.pt") for r in range(2)]
        assert ranks[0]["prompts"] != ranks[1]["prompts"]  # each rank draws its own prompts and noise
        assert not torch.equal(ranks[0]["rewards"], ranks[1]["rewards"])
        rewards = torch.cat([r["rewards"] for r in ranks])
        prompts = ranks[0]["prompts"] + ranks[1]["prompts"]
        expected = reference.advantages(EpochSamples(rewards, prompts)).advantages
        torch.testing.assert_close(torch.cat([r["advantages"] for r in ranks]), expected)

    # gradients were all-reduced: both ranks end with the same weights
    weights = [torch.load(dump / f"weights_epoch2_rank{r}.pt")["weights"] for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)

    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 epochs, written once (rank 0)
    assert ",8.0," in rows[1]  # 8 samples per epoch: 2 ranks x 2 batches x 2


def test_two_process_tdpo_r_keeps_policy_and_critic_in_sync(tmp_path):
    """The critic is trained through DDP too, and the neuron reset (on gathered activations, with
    the same draws on every rank) leaves both ranks with identical weights."""
    dump = tmp_path / "dump"
    run_cli(
        [
            "hardware.devices=2",
            "hardware.strategy=ddp",
            "epochs=2",
            "algorithm=tdpo_r",
            "algorithm.neuron_reset_freq=1",
            f"debug.dump_dir={dump}",
            f"output_root={tmp_path / 'out'}",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    weights = [torch.load(dump / f"weights_epoch2_rank{r}.pt")["weights"] for r in range(2)]
    assert any("critic" in name for name in weights[0])
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    assert "reset_neurons" in (run_dir / "metrics.csv").read_text().splitlines()[0]


def test_two_process_rwr_sparse_with_unequal_kept_counts_stays_in_step(tmp_path):
    """RWR-sparse keeps the global top half: the ranks keep different numbers of samples (checked),
    so without padding their numbers of backward passes, each a DDP all-reduce, would differ and
    the run would hang. It finishes, with identical weights on both ranks."""
    dump = tmp_path / "dump"
    run_cli(
        [
            "hardware.devices=2",
            "hardware.strategy=ddp",
            "epochs=3",
            "algorithm=rwr_sparse",
            "algorithm.percentile=50",
            "train.batch_size=1",
            "train.gradient_accumulation_steps=2",
            f"debug.dump_dir={dump}",
            f"output_root={tmp_path / 'out'}",
            *[a for a in SMALL if not a.startswith("train.")],
        ],
        cwd=tmp_path,
        timeout=300,  # a hang ends here, not in CI's own timeout
    )
    kept = [
        [int((torch.load(dump / f"advantages_epoch{epoch}_rank{r}.pt")["advantages"] > 0).sum()) for r in range(2)]
        for epoch in range(3)
    ]
    assert any(a != b for a, b in kept), kept  # the case under test happened
    for epoch in range(3):  # ... and every rank ran the same backward passes, each kind
        counts = [torch.load(dump / f"optimize_epoch{epoch}_rank{r}.pt") for r in range(2)]
        assert counts[0] == counts[1] and counts[0]["synchronized"] >= 1, (epoch, counts)
    weights = [torch.load(dump / f"weights_epoch3_rank{r}.pt")["weights"] for r in range(2)]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)

"""Per-prompt advantage normalization (docs/algorithms.md#per-prompt-stat-tracking) and DDPO's advantage rule."""

import numpy as np
import torch

from rlft.algorithms import DDPO
from rlft.algorithms.base import EpochSamples
from rlft.algorithms.stat_tracker import EPS, PerPromptStatTracker


def test_falls_back_to_batch_statistics_below_min_count():
    tracker = PerPromptStatTracker(buffer_size=16, min_count=4)
    prompts = ["a", "a", "b", "c"]
    rewards = np.array([1.0, 2.0, 3.0, 10.0])
    expected = (rewards - rewards.mean()) / (rewards.std() + EPS)
    np.testing.assert_allclose(tracker.update(prompts, rewards), expected)


def test_per_prompt_statistics_once_buffer_is_full_enough():
    tracker = PerPromptStatTracker(buffer_size=16, min_count=2)
    advantages = tracker.update(["a", "a", "b", "b"], np.array([1.0, 3.0, 10.0, 30.0]))
    np.testing.assert_allclose(advantages, [-1 / (1 + EPS), 1 / (1 + EPS), -10 / (10 + EPS), 10 / (10 + EPS)])


def test_buffer_keeps_the_latest_rewards_across_epochs():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=3)
    tracker.update(["p", "p"], np.array([100.0, 200.0]))  # 2 < min_count: batch statistics
    advantages = tracker.update(["p", "p"], np.array([1.0, 3.0]))  # buffer now [200, 1, 3]
    buffer = np.array([200.0, 1.0, 3.0])
    assert list(tracker.buffers["p"]) == [200.0, 1.0, 3.0]
    np.testing.assert_allclose(advantages, (np.array([1.0, 3.0]) - buffer.mean()) / (buffer.std() + EPS))


def test_state_round_trip():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=1)
    tracker.update(["x", "y", "x"], np.array([1.0, 2.0, 3.0]))
    restored = PerPromptStatTracker(buffer_size=4, min_count=1)
    restored.load_state_dict(tracker.state_dict())
    np.testing.assert_allclose(restored.update(["x"], np.array([5.0])), tracker.update(["x"], np.array([5.0])))


def test_ddpo_without_tracking_uses_global_zscore_and_clips():
    algorithm = DDPO(per_prompt_stat_tracking=False, adv_clip_max=1.0)
    rewards = torch.tensor([0.0, 0.0, 0.0, 10.0])
    advantages = algorithm.advantages(EpochSamples(rewards, ["a", "b", "c", "d"])).advantages
    raw = (rewards.double() - rewards.double().mean()) / (rewards.double().std(unbiased=False) + 1e-8)
    assert raw[3] > 1.0
    torch.testing.assert_close(advantages, raw.float().clamp(-1, 1))


def test_ddpo_state_round_trip():
    algorithm = DDPO(stat_buffer_size=8, stat_min_count=1)
    algorithm.advantages(EpochSamples(torch.tensor([1.0, 2.0]), ["a", "a"]))
    other = DDPO(stat_buffer_size=8, stat_min_count=1)
    other.load_state_dict(algorithm.state_dict())
    assert other.tracker.state_dict() == algorithm.tracker.state_dict()

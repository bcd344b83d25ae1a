"""GenEval on the compositional toy world (rlft/toy/geneval.py): the strict reward on rendered scenes, the
prompt source, the fixed evaluation set, the evaluation's figures against an independent computation on
a real policy, the command line, and a training run's per-kind columns (NaN: not scored)."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from rlft.config import build
from rlft.errors import ConfigError
from rlft.images import caption
from rlft.rewards.base import RewardRunner, to_uint8
from rlft.sampler import rollout
from rlft.streams import RandomStream, stream_seed
from rlft.toy.compositional import KINDS, CompositionalWorld, read_objects, render, satisfies, truth
from rlft.toy.geneval import (
    CompositionalPrompts,
    ToyGenEvalReward,
    accuracy,
    evaluate_geneval,
    evaluation_prompts,
    format_table,
    main,
    parse_args,
)
from rlft.train import build_policy, train
from tests.conftest import FAST, compose_config, noise

SWAP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def wrong(metadata: dict, world: CompositionalWorld) -> dict:
    """Metadata of a scene that fails `metadata`: another colour, one object too few, the relation reversed,
    the two colours swapped."""
    other = copy.deepcopy(metadata)
    include = other["include"]
    tag = metadata["tag"]
    if tag in ("single_object", "colors"):
        include[0]["color"] = next(c for c in ("red", "green") if c != include[0].get("color"))
    elif tag == "two_object":
        other["include"] = include[:1]
    elif tag == "counting":
        include[0]["count"] -= 1
        other["exclude"] = []
    elif tag == "position":
        include[1]["position"][0] = SWAP[include[1]["position"][0]]
    else:  # color_attr
        include[0]["color"], include[1]["color"] = include[1]["color"], include[0]["color"]
    return other


def scenes(seed: int = 3, per_kind: int = 12):
    world = CompositionalWorld(seed)
    return world, [world.sample(kind) for kind in KINDS for _ in range(per_kind)]


def test_the_reward_scores_every_kinds_scenes_1_and_wrong_scenes_0():
    world, drawn = scenes()
    images = np.stack([render(scene) for _, _, scene in drawn])
    prompts, metadata = [c for c, _, _ in drawn], [m for _, m, _ in drawn]
    assert ToyGenEvalReward().score_uint8(images, prompts, metadata).tolist() == [1.0] * len(drawn)
    wrong_scenes = [world.scene(wrong(m, world)) for m in metadata]
    assert not any(satisfies(truth(scene), m) for scene, m in zip(wrong_scenes, metadata))  # the test's premise
    wrong_images = np.stack([render(scene) for scene in wrong_scenes])
    scores = ToyGenEvalReward().score_uint8(wrong_images, prompts, metadata)
    assert scores.dtype == np.float32 and scores.tolist() == [0.0] * len(drawn)


@pytest.mark.parametrize("kind", KINDS)
def test_a_per_kind_reward_scores_its_kind_only_and_leaves_the_others_nan(kind):
    _, drawn = scenes(seed=4, per_kind=3)
    images = np.stack([render(scene) for _, _, scene in drawn])
    scores = ToyGenEvalReward(kind).score_uint8(images, [c for c, _, _ in drawn], [m for _, m, _ in drawn])
    for score, (_, metadata, _) in zip(scores, drawn):
        assert score == 1.0 if metadata["tag"] == kind else math.isnan(score)
    assert ToyGenEvalReward(kind).name == f"toy_geneval_{kind}" and ToyGenEvalReward.background


def test_the_reward_without_the_worlds_metadata_is_one_line_naming_the_prompt_source():
    image = render(CompositionalWorld(0).sample("counting")[2])[None]
    for metadata in ({}, {"tag": "photo", "include": []}):
        with pytest.raises(ConfigError, match=r"use prompt=toy_geneval$") as error:
            ToyGenEvalReward().score_uint8(image, ["a photo of a cat"], [metadata])
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^reward\.kind='count' is not a task kind; known: single_object"):
        build(compose_config(["~experiment", "reward=toy_geneval_counting", "reward.kind=count"]).reward, "reward")


def test_the_prompt_source_is_deterministic_given_its_random_state_and_draws_only_its_kinds():
    source = CompositionalPrompts()
    rng = random.Random(11)
    first = [source.sample(rng) for _ in range(30)]
    assert first == [source.sample(r) for r in [random.Random(11)] for _ in range(30)]
    state = rng.getstate()
    after = [source.sample(rng) for _ in range(10)]
    rng.setstate(state)
    assert [source.sample(rng) for _ in range(10)] == after  # a checkpointed random.Random resumes exactly
    assert len({c for c, _ in first}) > 20 and {m["tag"] for _, m in first} == set(KINDS)
    assert all(m["prompt"] == c and satisfies(truth(CompositionalWorld(0).scene(m)), m) for c, m in first[:6])
    other = CompositionalPrompts(seed=1)
    assert [other.sample(r) for r in [random.Random(11)] for _ in range(30)] != first  # prompt.seed moves the draws
    some = CompositionalPrompts(["position", "counting"])
    tags = Counter(m["tag"] for _, m in (some.sample(rng) for _ in range(200)))
    assert set(tags) == {"position", "counting"} and min(tags.values()) > 70
    # a per-kind training reward brings its kind only
    assert list(compose_config(["~experiment", "reward=toy_geneval_counting"]).prompt.kinds) == ["counting"]
    assert list(compose_config(["~experiment", "reward=toy_geneval"]).prompt.kinds) == list(KINDS)


def test_an_unknown_kind_is_one_line_naming_the_key_the_value_and_the_kinds():
    cfg = compose_config(["~experiment", "reward=toy_geneval", "prompt.kinds=[counting,colour]"])
    with pytest.raises(ConfigError) as error:
        build(cfg.prompt, "prompt")
    assert str(error.value) == (
        "prompt.kinds=[counting,colour]: 'colour' is not a task kind; known: single_object, two_object, counting, "
        "colors, position, color_attr"
    )


def test_the_evaluation_prompts_are_fixed_and_as_distinct_as_each_kind_allows():
    prompts = evaluation_prompts()
    assert prompts == evaluation_prompts() and prompts != evaluation_prompts(seed=1)
    # pinned: the evaluation set of seed 0 may never change (a score is only comparable on the same set)
    assert hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest().startswith("e870013a06a6b923")
    by_kind = {kind: [c for c, m in prompts if m["tag"] == kind] for kind in KINDS}
    assert [c for c, _ in prompts[:: 64]] == [
        "a red triangle", "a white circle and a green triangle", "three triangles", "a green square",
        "a triangle right of a circle", "a yellow triangle and a blue square",
    ]  # fmt: skip
    # every caption a kind has (shapes 3, colours 6, relations 4), or 64 distinct ones
    assert {kind: len(set(c)) for kind, c in by_kind.items()} == {
        "single_object": 18, "two_object": 64, "counting": 9, "colors": 18, "position": 24, "color_attr": 64,
    }  # fmt: skip
    assert all(len(c) == 64 for c in by_kind.values())
    # each caption as often as the others, or once more
    assert sorted(Counter(by_kind["counting"]).values()) == [7] * 8 + [8]
    assert evaluation_prompts(4) == [p for kind in KINDS for p in [q for q in prompts if q[1]["tag"] == kind][:4]]


def test_accuracy_and_its_clustered_standard_error():
    # by hand: p = 3/8; summed residuals per prompt 0.5, 0.25, -0.75; sqrt(3/2 * 0.875) / 8
    figures = accuracy([1, 1, 0, 0, 1, 0, 0, 0], list("aaaabbcc"))
    assert figures["accuracy"] == 3 / 8 and figures["se"] == pytest.approx(math.sqrt(1.5 * 0.875) / 8, rel=1e-12)
    assert figures["se_binomial"] == pytest.approx(math.sqrt(3 / 8 * 5 / 8 / 8)) and figures["prompts"] == 3
    assert math.isnan(accuracy([1, 0], ["a", "a"])["se"])  # one prompt: no spread between prompts to measure
    # the sandwich estimator of a regression on a constant, clustered (CR1), by matrix algebra
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60).astype(float)
    groups = rng.integers(0, 13, 60)
    x = np.ones((60, 1))
    bread = np.linalg.inv(x.T @ x)
    residual = y - x @ (bread @ x.T @ y)
    meat = sum(
        np.outer(x[groups == g].T @ residual[groups == g], x[groups == g].T @ residual[groups == g])
        for g in set(groups)
    )
    count = len(set(groups))
    expected = math.sqrt((count / (count - 1) * bread @ meat @ bread)[0, 0])
    assert accuracy(y.tolist(), [str(g) for g in groups])["se"] == pytest.approx(expected, rel=1e-12)
    # what it measures: the spread of the accuracy over draws of prompts of mixed difficulty and their images
    estimates, errors, binomial = [], [], []
    for _ in range(2000):
        difficulty = rng.beta(0.5, 0.5, 64)
        draws = (rng.random((64, 4)) < difficulty[:, None]).astype(float)
        result = accuracy(draws.ravel().tolist(), [str(g) for g in np.repeat(np.arange(64), 4)])
        estimates.append(result["accuracy"])
        errors.append(result["se"])
        binomial.append(result["se_binomial"])
    spread = np.std(estimates)
    assert np.mean(errors) == pytest.approx(spread, rel=0.08) and np.mean(binomial) < 0.8 * spread


@pytest.fixture(scope="module")
def toy_policy():
    return build_policy(compose_config(["~experiment", "model=toy"]))


def test_evaluate_geneval_matches_images_sampled_and_scored_one_by_one(toy_policy, tmp_path):
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    result = evaluate_geneval(
        toy_policy, 3, 2, num_steps=3, guidance_scale=1.0, batch_size=5, seed=7, grid=6, grid_path=tmp_path / "g.png",
        keep_images=True,
    )  # fmt: skip
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert np.array_equal(states[2], np.random.get_state()[1])  # the caller's random state is untouched
    assert (tmp_path / "g.png").is_file() and len((tmp_path / "g.txt").read_text().splitlines()) == 6
    # each image alone, from its own noise stream (seed, kind, prompt, seed index): the same image (to the
    # rounding of a batch of 1 against one of 5), read back and checked one by one
    prompts = evaluation_prompts(3)
    alone, expected = [], []
    runner = RewardRunner({})
    for k, kind in enumerate(KINDS):
        for i, (text, metadata) in enumerate(prompts[3 * k : 3 * k + 3]):
            for s in range(2):
                images = rollout(
                    toy_policy, _One(text, metadata), runner, batch_size=1, num_batches=1, num_steps=3,
                    guidance_scale=1.0, stream=RandomStream(stream_seed(7, k, i, s)), rng=random.Random(0),
                ).images  # fmt: skip
                alone.append(to_uint8(images)[0])
                image = result["images"][len(expected)]
                expected.append((kind, text, float(satisfies(read_objects(image), metadata))))
    runner.close()
    difference = np.abs(np.stack(alone).astype(int) - result["images"].astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    got = [(p["kind"], p["prompt"], score) for p in result["prompts"] for score in p["scores"]]
    assert got == expected
    assert 0 < sum(v for *_, v in expected) < len(expected)  # (a test of both outcomes: 3 of 36 right here)
    for kind in KINDS:
        scores = np.array([v for kd, _, v in expected if kd == kind])
        assert result["kinds"][kind]["accuracy"] == pytest.approx(scores.mean()) and result["kinds"][kind]["n"] == 6
        means = scores.reshape(3, 2).mean(1)  # three distinct captions of two images each
        clustered = math.sqrt(3 / 2 * np.sum((2 * (means - scores.mean())) ** 2)) / 6
        assert result["kinds"][kind]["se"] == pytest.approx(clustered, abs=1e-12)
    overall = result["overall"]
    assert overall["accuracy"] == pytest.approx(np.mean([result["kinds"][k]["accuracy"] for k in KINDS]))
    assert overall["se"] == pytest.approx(math.sqrt(sum(result["kinds"][k]["se"] ** 2 for k in KINDS)) / 6)
    table = format_table(result).splitlines()
    assert [line.split()[0] for line in table] == ["kind", *KINDS, "-" * len(table[0]), "overall"]
    assert table[-1].split()[-1] == "36" and len({len(line) for line in table}) == 1  # aligned


class _One:
    """A prompt source of one prompt."""

    def __init__(self, text, metadata):
        self.item = (text, metadata)

    def sample(self, rng):
        return self.item


def _finite(text: str) -> bool:
    return text not in ("", "nan") and math.isfinite(float(text))


def test_a_run_on_toy_geneval_logs_each_kind_over_its_own_images_and_the_command_evaluates_it(tmp_path):
    overrides = [
        "~experiment", "model=toy", "reward=toy_geneval", "epochs=1", "sample.batch_size=8", "sample.num_batches_per_epoch=2",
        "train.batch_size=8", "train.gradient_accumulation_steps=1", "sample.num_steps=2", "sample.num_images_logged=16",
        "showcase.samples=8", "showcase.batch_size=8", f"output_root={tmp_path}",
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    train(compose_config(overrides), run_dir)
    with (run_dir / "metrics.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    records = json.loads((run_dir / "images" / "epoch_0000.json").read_text())["images"]
    assert len(records) == 16
    drawn = Counter()
    for record in records:  # each image is scored by its own kind's reward only (NaN, left out, for the others)
        (name,) = record["eval_rewards"]
        assert record["eval_rewards"][name] == record["reward"]
        drawn[name] += 1
    assert 1 <= len(drawn) <= 4  # 4 prompts of 4 images
    for kind in KINDS:
        name = f"toy_geneval_{kind}"
        mean, std = row[f"eval_{name}_mean"], row[f"eval_{name}_std"]
        if name in drawn:
            values = [r["eval_rewards"][name] for r in records if name in r["eval_rewards"]]
            assert float(mean) == pytest.approx(np.mean(values)) and float(std) == pytest.approx(np.std(values))
        else:
            assert not _finite(mean) and not _finite(std)  # logged NaN: a stable column, nothing scored
    json.loads((run_dir / "final_metrics.json").read_text(), parse_constant=_no_nan)  # strict JSON
    showcase = json.loads((run_dir / "showcase.json").read_text(), parse_constant=_no_nan)
    before = json.loads((run_dir / "images" / "before.json").read_text(), parse_constant=_no_nan)["images"]
    for key, value in showcase["before"].items():
        name = key.removeprefix("eval_").removesuffix("_mean")
        scored = [
            r["reward"] if name == "reward" else r["eval_rewards"][name]
            for r in before
            if name == "reward" or name in r["eval_rewards"]
        ]
        assert value == pytest.approx(np.mean(scored))
    # the command, on the run's checkpoint at its sampler settings
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "rlft.toy.geneval", "--checkpoint", str(run_dir), "--per-kind", "2",
         "--seeds-per-prompt", "2", "--batch-size", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert noise(result) == []
    written = json.loads((out / "geneval.json").read_text(), parse_constant=_no_nan)
    assert written["settings"]["num_steps"] == 2 and written["settings"]["kernel"] == "DDIMKernel(eta=1.0)"
    assert format_table(written) in result.stdout and (out / "geneval.png").is_file()
    assert [line.split()[0] for line in result.stdout.splitlines()[1:9]] == ["kind", *KINDS, "-" * 40]


def _no_nan(constant: str):
    raise AssertionError(f"{constant} in a JSON file")


def test_the_command_evaluates_a_base_model_and_refuses_other_keys_with_a_checkpoint(tmp_path, capsys):
    main(parse_args(["~experiment", "model=toy", "sample.num_steps=2", "--per-kind", "2", "--seeds-per-prompt", "1",
                     "--grid", "0", "--out", str(tmp_path)]))  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 prompts per kind x 1 seeds, 2 steps, guidance 1.0, DDIMKernel(eta=1.0), 32 px" in printed
    assert json.loads((tmp_path / "geneval.json").read_text())["overall"]["n"] == 12
    assert not (tmp_path / "geneval.png").exists()
    with pytest.raises(SystemExit):
        main(parse_args(["--checkpoint", str(tmp_path), "model=tiny"]))
    assert "only sample.* keys may change" in capsys.readouterr().err


def test_a_training_reward_that_leaves_images_unscored_stops_the_run_naming_it(tmp_path):
    cfg = compose_config(["~experiment", "model=toy", "reward=toy_geneval_counting", "prompt.kinds=[colors]", *FAST,
                          "sample.num_steps=1", f"output_root={tmp_path}"])  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=r"the training reward toy_geneval_counting \(rlft.toy.geneval.ToyGenEvalReward\) did not score 4 of the epoch's 4 images",
    ):
        train(cfg, tmp_path / "run")


def test_captions_leave_out_what_was_not_scored():
    assert caption("two circles", 1.0, {"toy_geneval_counting": 1.0, "toy_geneval_colors": math.nan}) == (
        '"two circles" | reward 1.000 | toy_geneval_counting 1.000'
    )

"""model=toy_flow (rlft/toy/flow.py): its pretraining (rlft/pretrain_flow.py, a smoke run of a few steps:
a model that barely draws, shared by every test here), the pipeline it saves, fine-tuning it with the
run's toy_geneval before, after and every n epochs (rlft/module.py run_geneval), resume with the
evaluation on, the importance ratio before the first update, and the one-line refusals."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft.errors import ConfigError
from rlft.kernels.choice import EulerKernel
from rlft.rewards import RewardRunner
from rlft.sampler import rollout
from rlft.streams import RandomStream
from rlft.toy.compositional import KINDS, CompositionalWorld
from rlft.toy.flow import compositional_vocabulary, load_toy_flow
from rlft.toy.geneval import CompositionalPrompts, ToyGenEvalReward, evaluate_geneval
from rlft.train import build_policy, train, validate
from rlft.trajectories import rescore, training_batches, transition_of
from tests.conftest import compose_config, run_cli

SMOKE = ["vae.steps=3", "transformer.steps=3", "vae.batch_size=8", "transformer.batch_size=8"]
SMOKE += ["evaluation.per_kind=2", "evaluation.seeds_per_prompt=1", "evaluation.also_guidance=[3.0]"]
# 8 samples (2 prompts x 4 images) of 3 steps an epoch, minibatches of 4; toy_geneval of 2 prompts per
# kind, 1 image each (two prompts: a standard error to measure), in one batch.
RUN = ["~experiment", "model=toy_flow", "sample.batch_size=4", "sample.num_batches_per_epoch=2"]
RUN += ["sample.images_per_prompt=4", "sample.num_steps=3", "train.batch_size=4", "train.gradient_accumulation_steps=1"]
RUN += ["geneval.per_kind=2", "geneval.seeds_per_prompt=1", "geneval.batch_size=12"]
GENEVAL = [*(f"geneval_{kind}" for kind in KINDS), "geneval_overall", "geneval_overall_se"]
TIMINGS = ("sampling_s", "reward_wait_s", "reward_s", "training_s", "images_per_s")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, dict]:
    """The smoke pretraining's output directory and its report."""
    from hydra import compose, initialize_config_dir

    from rlft.config import CONFIG_DIR
    from rlft.pretrain_flow import pretrain_flow

    out = tmp_path_factory.mktemp("pretrain_flow")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain_flow", overrides=SMOKE)
    return out, pretrain_flow(cfg, out)


@pytest.fixture(scope="module")
def pipeline(pretrained) -> str:
    return str(pretrained[0] / "pipeline")


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _no_nan(constant: str):
    raise AssertionError(f"{constant} in a JSON file")


def test_the_smoke_pretraining_reports_per_kind_and_saves_a_float32_pipeline(pretrained):
    out, report = pretrained
    assert json.loads((out / "pretrain_report.json").read_text()) == report
    assert 0.0 <= report["reconstruction_accuracy"] <= 1.0 and report["seconds"] > 0
    samples = report["samples"]
    assert list(samples["kinds"]) == list(KINDS) and (out / "samples.png").is_file()
    for kind in KINDS:  # 2 prompts per kind, 1 image each
        assert 0.0 <= samples["kinds"][kind]["accuracy"] <= 1.0 and samples["kinds"][kind]["n"] == 2
    assert samples["overall"]["n"] == 12
    assert samples["overall"]["accuracy"] == pytest.approx(np.mean([samples["kinds"][k]["accuracy"] for k in KINDS]))
    assert samples["settings"]["kernel"] == "EulerKernel()" and samples["settings"]["resolution"] == 32
    guided = report["samples_guidance_3"]  # evaluation.also_guidance: the same prompts and seeds, guided
    assert guided["settings"]["guidance_scale"] == 3.0 and samples["settings"]["guidance_scale"] == 1.0
    assert guided["overall"]["n"] == 12

    components = load_toy_flow(str(out / "pipeline"))  # stored in float16, loaded in float32
    assert components.text_encoder_3 is None and components.tokenizer_3 is None  # no T5
    for module in (components.transformer, components.vae, components.text_encoder, components.text_encoder_2):
        assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_the_vae_scales_its_latents_by_statistics_of_the_data(pipeline):
    from rlft.pretrain_flow import SceneStream

    vae = load_toy_flow(pipeline).vae
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    assert shift != 0.0 and scale != 1.0  # not the builder's placeholders
    # the pretraining's own scenes again (its stream after the VAE's 3 batches of 8): the latents' mean and
    # 1 / std, to the float16 rounding of the stored weights
    scenes = SceneStream(0, list(KINDS), 32)
    for _ in range(3):
        scenes.batch(8)
    images, _, _ = scenes.batch(256)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode().double()
    assert latents.mean().item() == pytest.approx(shift, rel=1e-2, abs=1e-3)
    assert 1 / latents.std().item() == pytest.approx(scale, rel=1e-2)
    # and scenes it never saw come out standardized
    fresh, _, _ = SceneStream(123, list(KINDS), 32).batch(256)
    with torch.no_grad():
        z = (vae.encode(fresh).latent_dist.mode().double() - shift) * scale
    assert abs(z.mean().item()) < 0.05 and z.std().item() == pytest.approx(1.0, abs=0.05)


def test_the_tokenizers_spell_each_word_as_one_token_and_every_caption_fits_untruncated(pipeline):
    components = load_toy_flow(pipeline)
    vocabulary = compositional_vocabulary()
    seen: set[str] = set()
    captions = []
    for seed in range(3):
        world = CompositionalWorld(seed)
        captions += [world.prompt(kind)[0] for kind in KINDS for _ in range(200)]
    for tokenizer in (components.tokenizer, components.tokenizer_2):
        assert tokenizer.model_max_length == 12
        for word in vocabulary:
            assert tokenizer.tokenize(word) == [f"{word}</w>"]
        longest = 0
        for text in captions:
            words = text.split()
            seen.update(words)
            assert tokenizer.tokenize(text) == [f"{word}</w>" for word in words], text
            ids = tokenizer(text, padding="max_length", max_length=12, truncation=True).input_ids
            # the start token, one per word, the end token, then padding: nothing cut off
            assert ids[0] == tokenizer.bos_token_id and ids[len(words) + 1] == tokenizer.eos_token_id, text
            assert len(tokenizer(text).input_ids) == len(words) + 2 <= 12, text
            longest = max(longest, len(words))
        assert longest == 7  # "a red circle and a blue square": the longest captions, 9 tokens
    assert seen == set(vocabulary)  # the vocabulary is exactly the captions' words


def test_model_toy_flow_trains_with_geneval_before_after_and_every_epoch(pipeline, tmp_path):
    cfg = compose_config([*RUN, f"model.path={pipeline}", "epochs=2", "geneval.every=1", f"output_root={tmp_path}"])
    run_dir = tmp_path / "run"
    final = train(cfg, run_dir)
    showcase = json.loads((run_dir / "showcase.json").read_text(), parse_constant=_no_nan)
    for when in ("before", "after"):
        assert set(GENEVAL) <= set(showcase[when]) and (run_dir / "images" / f"geneval_{when}.png").is_file()
        assert showcase[when]["geneval_overall"] == pytest.approx(
            np.mean([showcase[when][f"geneval_{k}"] for k in KINDS])
        )
    measured = rows(run_dir)
    assert [row["epoch"] for row in measured] == ["0", "1"]
    for row in measured:
        assert all(math.isfinite(float(row[column])) for column in GENEVAL)
    # the last epoch's evaluation follows its update, as the "after" one does: the same weights, prompts, noise
    for column in GENEVAL:
        assert float(measured[1][column]) == pytest.approx(showcase["after"][column], rel=1e-6, abs=1e-7)
    strict = json.loads((run_dir / "final_metrics.json").read_text(), parse_constant=_no_nan)
    assert strict["geneval_overall"] == pytest.approx(final["geneval_overall"])
    # "before", evaluated independently: the base model's Euler ODE at the run's steps and guidance
    policy = build_policy(cfg)
    result = evaluate_geneval(
        policy, 2, 1, num_steps=3, guidance_scale=1.0, batch_size=12, seed=cfg.geneval.seed, kernel=EulerKernel()
    )
    assert {kind: showcase["before"][f"geneval_{kind}"] for kind in KINDS} == {
        kind: result["kinds"][kind]["accuracy"] for kind in KINDS
    }
    assert showcase["before"]["geneval_overall_se"] == pytest.approx(result["overall"]["se"])


def test_geneval_every_two_epochs_leaves_the_others_nan_in_the_csv_and_out_of_the_history(pipeline, tmp_path, capsys):
    """One prompt per kind: no standard error to measure (NaN), which stays out of showcase.json too."""
    overrides = [*RUN, f"model.path={pipeline}", "epochs=3", "geneval.every=2", "geneval.per_kind=1"]
    run_dir = tmp_path / "run"
    final = train(compose_config([*overrides, f"output_root={tmp_path}"]), run_dir)
    measured = rows(run_dir)
    assert [row["epoch"] for row in measured] == ["0", "1", "2"]
    for epoch, row in enumerate(measured):
        values = [row[column] for column in GENEVAL]
        if epoch == 1:
            assert all(math.isfinite(float(v)) for v in values[:-1]) and values[-1] == "nan"  # (the s.e.)
        else:  # logged NaN in every column (stable columns), written as "nan"
            assert values == ["nan"] * len(GENEVAL), (epoch, values)
    assert not any(key.startswith("geneval_") for key in final)
    json.loads((run_dir / "final_metrics.json").read_text(), parse_constant=_no_nan)
    showcase = json.loads((run_dir / "showcase.json").read_text(), parse_constant=_no_nan)
    for when in ("before", "after"):
        assert set(showcase[when]) == set(GENEVAL[:-1])
    printed = capsys.readouterr().out
    assert "toy_geneval after training" in printed and "nan" not in printed.lower()


def test_a_resumed_run_with_geneval_on_matches_the_uninterrupted_one(pipeline, tmp_path):
    """toy_geneval before the first update and after epoch 0 must not move training's random streams:
    a dense reward (brightness) so that every epoch takes its optimizer steps."""
    args = [*RUN, f"model.path={pipeline}", "geneval.every=1", "reward=brightness", "prompt=toy_geneval"]
    straight = tmp_path / "straight"
    train(compose_config([*args, "epochs=2", f"output_root={straight}"]), straight / "run")
    resumed = tmp_path / "resumed"
    first = train(compose_config([*args, "epochs=1", f"output_root={resumed}"]), resumed / "run")
    assert first["optimizer_steps"] == 2 and math.isfinite(first["ratio"])  # the ratio is measured after a step
    train(
        compose_config([*args, "epochs=2", f"output_root={resumed}", f"resume={resumed / 'run'}"]),
        resumed / "other",
    )

    def compared(run_dir: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows(run_dir)]

    straight_rows, resumed_rows = compared(straight / "run"), compared(resumed / "run")
    assert [row["epoch"] for row in resumed_rows] == ["0", "1"]
    assert {"reward_mean", "loss", "ratio", "approx_kl", "clipfrac", *GENEVAL} <= set(straight_rows[1])
    assert resumed_rows == straight_rows  # every epoch, every metric but the timings, to the digit
    showcases = [json.loads((d / "run" / "showcase.json").read_text()) for d in (straight, resumed)]
    assert showcases[0] == showcases[1]


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_the_importance_ratio_is_exactly_one_before_the_first_update(pipeline, guidance):
    cfg = compose_config(["~experiment", "model=toy_flow", f"model.path={pipeline}"])
    policy = build_policy(cfg, keep_reference=True)  # Flow-GRPO's SDE kernel, LoRA adapters, a reference
    runner = RewardRunner({"train": ToyGenEvalReward()})
    trajectories = rollout(
        policy, CompositionalPrompts(), runner, batch_size=4, num_batches=2, num_steps=3, guidance_scale=guidance,
        stream=RandomStream(0), rng=random.Random(0), images_per_prompt=4,
    )  # fmt: skip
    runner.collect()
    runner.close()
    trajectories.advantages = torch.randn(len(trajectories))
    assert torch.isfinite(trajectories.log_probs).all()
    # shuffled minibatches of the sampling batch's size: other samples beside each one than at sampling (the
    # two sampling batches mixed), time permuted per sample, the same shapes, so the same bits
    batches = training_batches(trajectories, 4, 3, RandomStream(1))
    for batch in batches:
        for j in range(3):
            step = batch.column(j)
            with torch.no_grad():
                assert torch.equal(rescore(policy, step, guidance), step.log_probs)
                assert torch.equal(transition_of(policy, step, guidance, reference=True).log_prob, step.log_probs)
    # One sample at a time the CPU's matrix products round differently (a product of 1 to 3 rows takes another
    # kernel than one of 4: the timestep embedder's Linear differs in its last bit): 1 to float32's rounding.
    for batch in training_batches(trajectories, 1, 3, RandomStream(1)):
        step = batch.column(0)
        with torch.no_grad():
            torch.testing.assert_close(rescore(policy, step, guidance), step.log_probs, rtol=0, atol=1e-5)
    # (which a trained policy would fail: adapters moved off zero change the log-probs)
    with torch.no_grad():
        for name, param in policy.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        step = batches[0].column(0)
        assert not torch.equal(rescore(policy, step, guidance), step.log_probs)


def test_model_toy_flow_without_its_pipeline_names_model_path_and_the_pretrain_command(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["~experiment", "model=toy_flow", f"model.path={empty}"], cwd=tmp_path, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"rlft: error: model.path={empty}: it has no model_index.json; give the pipeline/ directory of a "
        "`python -m rlft.pretrain --config-name pretrain_flow` run, or model.path=null for the shipped one"
    )
    with pytest.raises(ConfigError, match=r"^model\.path=\S+/missing: there is no such directory; .* `python -m "):
        validate(compose_config(["~experiment", "model=toy_flow", f"model.path={tmp_path / 'missing'}"]))
    # the loader's own refusal (model.path=null without the shipped pipeline reaches it)
    with pytest.raises(ConfigError, match=r"python -m rlft.pretrain --config-name pretrain_flow.*model\.path="):
        load_toy_flow(str(tmp_path))


@pytest.mark.parametrize(
    "override,message",
    [
        ("geneval.kernel=bogus", r"^geneval\.kernel=bogus: give euler \(a flow model's ODE\) or run \(the run's own kernel\)$"),
        ("geneval.per_kind=-1", r"^geneval\.per_kind=-1 must be >= 0 \(.*0 switches toy_geneval off\)$"),
        ("geneval.every=-2", r"^geneval\.every=-2 must be >= 0"),
        ("geneval.seeds_per_prompt=0", r"^geneval\.seeds_per_prompt=0 must be at least 1"),
    ],
)  # fmt: skip
def test_bad_geneval_settings_are_one_line_before_anything_loads(tmp_path, override, message):
    cfg = compose_config(["~experiment", "model=toy_flow", f"model.path={tmp_path}", "geneval.per_kind=2", override])
    with pytest.raises(ConfigError, match=message) as raised:
        validate(cfg)  # (model.path has no pipeline: the check comes first, nothing loads)
    assert "\n" not in str(raised.value)


def test_logit_normal_levels_have_the_asked_logit_mean_and_std_and_a_bad_draw_is_one_line():
    from omegaconf import OmegaConf

    from rlft.pretrain_flow import training_levels

    settings = OmegaConf.create({"timesteps": "logit_normal", "logit_mean": 0.5, "logit_std": 0.7})
    u = training_levels(settings, RandomStream(0), 200_000).double()
    assert bool(((u > 0) & (u < 1)).all())
    logits = torch.log(u / (1 - u))  # sigmoid's inverse: back to the normal draw
    assert logits.mean().item() == pytest.approx(0.5, abs=0.01) and logits.std().item() == pytest.approx(0.7, abs=0.01)
    # the median of a logit-normal is sigmoid(m): the draw is centred where m puts it
    assert u.median().item() == pytest.approx(1 / (1 + math.exp(-0.5)), abs=0.005)
    assert training_levels(OmegaConf.create({"timesteps": "uniform"}), RandomStream(0), 8) is None
    with pytest.raises(ConfigError, match=r"^transformer\.timesteps='cosine' is not a timestep draw; use uniform or logit_normal$"):
        training_levels(OmegaConf.create({"timesteps": "cosine"}), RandomStream(0), 8)

    from hydra import compose, initialize_config_dir

    from rlft.config import CONFIG_DIR
    from rlft.pretrain_flow import pretrain_flow

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain_flow", overrides=["transformer.timesteps=cosine"])
    with pytest.raises(ConfigError, match=r"^transformer\.timesteps='cosine'"):
        pretrain_flow(cfg, Path("unused"))  # refused before the VAE's 1500 steps start


def test_the_moving_average_is_what_is_evaluated_and_the_own_weights_come_back():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from rlft.pretrain_flow import averaged_weights

    torch.manual_seed(0)
    trained = torch.nn.Linear(3, 2)
    average = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for step in range(5):
        with torch.no_grad():
            trained.weight.add_(torch.randn(2, 3))
        average.update_parameters(trained)
        now = trained.weight.detach().double()
        expected = now.clone() if step == 0 else 0.9 * expected + 0.1 * now  # the first update copies
    own = trained.weight.detach().clone()
    with averaged_weights(trained, average):
        assert torch.allclose(trained.weight.double(), expected, atol=1e-6)
    assert torch.equal(trained.weight, own)
    with averaged_weights(trained, None):  # no average: the weights as they are
        assert torch.equal(trained.weight, own)


def test_a_second_stage_trains_the_transformer_on_from_a_pipeline_and_keeps_its_vae(pipeline, tmp_path):
    from hydra import compose, initialize_config_dir

    from rlft.config import CONFIG_DIR
    from rlft.pretrain_flow import pretrain_flow

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain_flow", overrides=[*SMOKE, "seed=1", f"init_from={pipeline}", "vae.steps=0"])
    pretrain_flow(cfg, tmp_path)
    before, after = load_toy_flow(pipeline), load_toy_flow(str(tmp_path / "pipeline"))
    assert (after.vae.config.shift_factor, after.vae.config.scaling_factor) == (
        before.vae.config.shift_factor,
        before.vae.config.scaling_factor,
    )
    for a, b in zip(after.vae.state_dict().values(), before.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    moved = [not torch.equal(a, b) for a, b in zip(after.transformer.parameters(), before.transformer.parameters())]
    assert any(moved)

"""Every option of every group composes; bad choices and values end with one clear message."""

import pytest

from rlft.config import CONFIG_DIR, build, on_experiment, options
from rlft.errors import ConfigError
from rlft.train import validate
from tests.conftest import compose_config, run_cli

GROUPS = ["algorithm", "reward", "prompt", "model", "hardware", "logger", "experiment"]


def test_every_group_has_its_options():
    assert {"ddpo"} <= set(options("algorithm"))
    assert {"jpeg_compressibility", "jpeg_incompressibility", "brightness"} <= set(options("reward"))
    assert {
        "imagenet_animals",
        "imagenet_all",
        "imagenet_dogs",
        "simple_animals",
        "common_animals",
        "nouns_activities",
        "hpsv2_photo",
        "from_file",
    } <= set(options("prompt"))
    assert {"tiny", "tiny_lora", "small", "sd14", "sd15"} <= set(options("model"))
    assert {"cpu", "gpu", "multi_gpu"} <= set(options("hardware"))
    assert {"csv", "tensorboard", "wandb"} <= set(options("logger"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("prompt", "from_file"):
        overrides.append("prompt.path=simple_animals.txt")
    if (group, option) == ("algorithm", "grpo"):
        overrides.append("sample.images_per_prompt=2")  # GRPO compares images of one prompt
    cfg = compose_config(overrides)
    validate(cfg)
    if group != "experiment":  # presets are merged into the root, not kept as a node
        assert cfg[group] is not None


@pytest.mark.parametrize(
    "name,count,first,last",
    [
        ("imagenet_animals", 398, "tench, Tinca tinca", "puffer, pufferfish, blowfish, globefish"),
        ("imagenet_all", 1000, "tench, Tinca tinca", "toilet tissue, toilet paper, bathroom tissue"),
        ("imagenet_dogs", 118, "Chihuahua", "Mexican hairless"),
        ("simple_animals", 45, "cat", "kangaroo"),
        ("common_animals", 45, "cat", "kangaroo"),
        ("nouns_activities", 135, "a cat washing the dishes", "a kangaroo playing chess"),
        ("hpsv2_photo", 800, None, None),
    ],
)
def test_prompt_sets(name, count, first, last):
    source = build(compose_config([f"prompt={name}"]).prompt)
    assert len(source) == count
    assert all(p.strip() for p in source.prompts)
    if first:
        assert source.prompts[0] == first and source.prompts[-1] == last


def test_nouns_activities_articles():
    prompts = build(compose_config(["prompt=nouns_activities"]).prompt).prompts
    assert "an ant riding a bike" in prompts


def test_from_file_takes_a_real_path(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("one\n\ntwo\n")
    source = build(compose_config(["prompt=from_file", f"prompt.path={path}"]).prompt)
    assert source.prompts == ("one", "two")


def test_missing_prompt_file_names_the_choices():
    with pytest.raises(ConfigError, match="simple_animals.txt"):
        build(compose_config(["prompt=from_file", "prompt.path=/nowhere.txt"]).prompt)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("train.batch_size=3", "train.batch_size=3 must divide"),
        ("sample.kernel.eta=-1", "sample.kernel.eta=-1"),
        ("train.gradient_accumulation_steps=3", "gradient_accumulation_steps=3"),
        ("train.timestep_fraction=0", "timestep_fraction"),
        ("train.timestep_window=[0.5,0.5]", r"timestep_window=\[0.5, 0.5\]"),
        ("sample.images_per_prompt=3", "images_per_prompt=3 must"),
    ],
)
def test_bad_values_are_rejected(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate(compose_config([override]))


@pytest.mark.parametrize("override", ["epochs=ten", "sample.kernel.eta=fast", "train.cfg=3"])
def test_wrong_types_are_rejected(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config([override]))


def test_unavailable_hardware_is_one_clear_message(tmp_path):
    result = run_cli(["hardware=gpu", f"output_root={tmp_path}"], cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "rlft: error:" in result.stderr and "Traceback" not in result.stderr


def test_unknown_option_lists_the_choices(tmp_path):
    result = run_cli(["algorithm=nope"], cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "Available options in 'algorithm'" in result.stderr and "ddpo" in result.stderr


def test_missing_model_is_one_clear_message(tmp_path):
    result = run_cli(["model=sd14", "model.path=/no/such/dir", f"output_root={tmp_path}"], cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "rlft: error: model.path=/no/such/dir: there is no such directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert "`hf download CompVis/stable-diffusion-v1-4 --local-dir /no/such/dir`" in result.stderr


def test_hub_model_offline_names_the_fix(tmp_path):
    result = run_cli(["model=sd15", f"output_root={tmp_path}"], cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "`hf download stable-diffusion-v1-5/stable-diffusion-v1-5`" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_dir_is_the_source_tree():
    assert (CONFIG_DIR / "train.yaml").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.clip_range=abc", "algorithm.clip_range='abc' should be of type float"),
        ("reward.quality=high", "reward.quality='high' should be of type int"),
        ("algorithm.kl.penalty=kld", "algorithm.kl.penalty='kld' is not one of"),
    ],
)
def test_component_arguments_are_checked_by_name(tmp_path, override, message):
    from rlft.train import build_module

    with pytest.raises(ConfigError, match=message):
        build_module(compose_config([override]), tmp_path)


def test_tdpo_embedder_arguments_are_checked(tmp_path):
    from rlft.train import build_module

    cfg = compose_config(["algorithm=tdpo", "model.image_embedder.layers=two"])
    # named by the key the user sets: algorithm.embedder is ${model.image_embedder}
    with pytest.raises(ConfigError, match=r"model\.image_embedder\.layers='two' should be of type int"):
        build_module(cfg, tmp_path)


def test_on_experiment_appends_the_experiment_unless_one_is_chosen():
    assert on_experiment(["-m", "seed=0,1"], "demo") == ["-m", "seed=0,1", "experiment=demo"]
    assert on_experiment(["experiment=toy_demo", "seed=1"], "demo") == ["experiment=toy_demo", "seed=1"]
    assert on_experiment(["+experiment=x"], "demo") == ["+experiment=x"]
    assert on_experiment(["~experiment", "model=tiny"], "demo") == ["~experiment", "model=tiny"]
    assert compose_config(["seed=3"]).model.components._target_ != "rlft.toy.model.load_toy"  # the tests' base

"""Defaults that follow the choices: a model brings its run's sizes and a reward that suits it, a
toy reward brings the toy prompts, and nothing needs a preset named or removed (conf/train.yaml).

Composed through Hydra exactly as `python -m rlft` composes them (no experiment pinned)."""

import pytest
from hydra import compose, initialize_config_dir

from rlft.config import CONFIG_DIR


def composed(command: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=command.split())


def test_the_default_run_is_grpo_on_the_shipped_toy_flow_model_with_toy_geneval():
    cfg = composed("")
    assert cfg.model.components._target_ == "rlft.toy.flow.load_toy_flow" and cfg.model.path is None
    assert cfg.model.policy._target_ == "rlft.families.sd3.SD3Policy"
    assert cfg.algorithm._target_ == "rlft.algorithms.GRPO" and cfg.sample.kernel._target_.endswith("FlowGRPOKernel")
    assert cfg.reward._target_ == "rlft.toy.geneval.ToyGenEvalReward"
    assert cfg.prompt._target_ == "rlft.toy.geneval.CompositionalPrompts"
    s, t = cfg.sample, cfg.train
    assert (s.num_steps, s.guidance_scale, s.images_per_prompt, s.batch_size * s.num_batches_per_epoch) == (10, 4.5, 8, 64)
    assert (t.batch_size * t.gradient_accumulation_steps, t.learning_rate, list(t.timestep_window)) == (64, 1e-3, [0, 0.9])
    assert (cfg.epochs, cfg.geneval.per_kind, cfg.geneval.seeds_per_prompt) == (60, 64, 2)  # 768 images before and after


def test_model_toy_is_the_toy_ddpo_demo():
    cfg = composed("model=toy")
    assert cfg.model.components._target_ == "rlft.toy.model.load_toy"
    assert (cfg.reward._target_, cfg.reward.aspect) == ("rlft.toy.rewards.ToyReward", "alignment")
    assert cfg.prompt._target_ == "rlft.toy.prompts.ToyPrompts"
    assert list(cfg.eval_rewards) == ["toy_color", "toy_shape"]
    assert cfg.algorithm._target_ == "rlft.algorithms.DDPO" and cfg.algorithm.stat_min_count == 4
    s, t = cfg.sample, cfg.train
    assert (s.num_steps, s.guidance_scale, s.images_per_prompt, s.batch_size * s.num_batches_per_epoch) == (5, 1.0, 4, 64)
    assert (t.batch_size * t.gradient_accumulation_steps, t.learning_rate, list(t.timestep_window)) == (64, 1e-3, [0, 0.4])
    assert cfg.model.lora.r == 8 and "attn2" in cfg.model.lora.target_modules
    assert (cfg.epochs, cfg.showcase.samples) == (200, 256)


SD_COMMANDS = [
    "model=sd15 reward=aesthetic hardware=gpu",  # the README's first real run
    "algorithm=tdpo reward=pickscore model=sd14",  # the mission's own example
    "model=sd15 hardware=gpu",
    "model=sd14 algorithm=rwr reward=jpeg_compressibility",
]


@pytest.mark.parametrize("command", SD_COMMANDS)
def test_stable_diffusion_runs_get_the_papers_sampler_and_lora(command):
    cfg = composed(command)
    assert cfg.model.components._target_ == "rlft.models.load_pretrained"
    s, t = cfg.sample, cfg.train
    assert (s.num_steps, s.guidance_scale, s.kernel.eta, s.images_per_prompt) == (50, 5.0, 1.0, 1)
    assert s.batch_size * s.num_batches_per_epoch == 32  # per GPU, as PT-DDPO's 8-GPU runs
    # 2 optimizer steps per epoch, lr 3e-4, the whole chain trained
    assert (s.batch_size * s.num_batches_per_epoch) // (t.batch_size * t.gradient_accumulation_steps) == 2
    assert (t.learning_rate, list(t.timestep_window)) == (3e-4, [0.0, 1.0])
    assert cfg.model.lora.r == 4 and list(cfg.model.lora.target_modules) == ["to_k", "to_q", "to_v", "to_out.0"]
    assert cfg.prompt._target_ != "rlft.toy.prompts.ToyPrompts" and list(cfg.eval_rewards) == []
    assert "toy" not in cfg.reward._target_  # the toy model's reward does not follow it to SD
    assert cfg.showcase.samples == 16


def test_the_model_brings_a_reward_the_command_line_replaces():
    assert composed("model=sd15").reward._target_ == "rlft.rewards.AestheticScore"
    assert composed("model=tiny").reward._target_ == "rlft.rewards.JpegCompressibility"
    assert composed("model=sd15 reward=pickscore").reward._target_ == "rlft.rewards.PickScore"
    assert composed("model=toy algorithm=tdpo_r").algorithm._target_ == "rlft.algorithms.TDPO"


@pytest.mark.parametrize("model", ["tiny", "tiny_lora", "small"])
def test_the_tiny_models_get_the_tiny_demos_sizes(model):
    cfg = composed(f"model={model}")
    s, t = cfg.sample, cfg.train
    assert (s.num_steps, s.batch_size * s.num_batches_per_epoch, t.batch_size * t.gradient_accumulation_steps) == (
        10,
        16,
        16,
    )
    assert (t.learning_rate, cfg.epochs) == (2e-3, 40)
    assert (cfg.model.lora is None) == (model == "tiny")


@pytest.mark.parametrize("reward", ["toy_alignment", "toy_color", "toy_shape"])
def test_a_toy_reward_brings_the_toy_prompts_on_any_model(reward):
    cfg = composed(f"model=tiny reward={reward}")
    assert cfg.prompt._target_ == "rlft.toy.prompts.ToyPrompts"
    aspect = reward.removeprefix("toy_")
    assert f"toy_{aspect}" not in cfg.eval_rewards and len(cfg.eval_rewards) == 2  # the other two aspects
    assert composed(f"reward={reward} prompt=manual").prompt._target_ != "rlft.toy.prompts.ToyPrompts"


def test_a_preset_sets_the_papers_run_on_top_and_the_command_line_wins():
    cfg = composed("experiment=ddpo_aesthetic")
    assert (cfg.epochs, cfg.algorithm.stat_buffer_size, cfg.prompt.path.endswith("simple_animals.txt")) == (200, 32, True)
    cfg = composed("experiment=ddpo_aesthetic sample.num_steps=20 model=sd15")
    assert cfg.sample.num_steps == 20 and "stable-diffusion-v1-5" in cfg.model.components.hub_id
    assert composed("experiment=demo").model.components._target_ == "rlft.models.build_offline"


@pytest.mark.parametrize(
    "model,family,kernel",
    [(m, "sd1.SD1Policy", "DDIMKernel") for m in ("toy", "tiny", "tiny_lora", "small", "sd14", "sd15")]
    + [(m, "sd3.SD3Policy", "FlowGRPOKernel") for m in ("tiny_sd3", "sd3_5_medium")],
)
def test_every_model_names_its_familys_policy_class_and_brings_its_kernel(model, family, kernel):
    from rlft.policy import policy_class

    cfg = composed(f"model={model}")
    assert cfg.model.policy._target_ == f"rlft.families.{family}"
    assert policy_class(cfg.model).__name__ == family.split(".")[1]
    assert cfg.sample.kernel._target_ == f"rlft.kernels.{kernel}"


def test_a_policy_class_that_is_not_there_is_one_line():
    from omegaconf import OmegaConf

    from rlft.errors import ConfigError
    from rlft.policy import Policy, policy_class

    assert policy_class(OmegaConf.create({"components": {}})) is Policy  # a user's model config naming none
    for target in ("rlft.policy.Nope", "nopkg.Policy", "rlft.policy.policy_class"):
        with pytest.raises(ConfigError, match=rf"^model\.policy\._target_={target}: no such policy class; .*SD1Policy"):
            policy_class(OmegaConf.create({"policy": {"_target_": target}}))

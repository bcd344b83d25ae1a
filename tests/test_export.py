"""The trained LoRA is exported in diffusers' format and loads back with load_lora_weights."""

import torch
from diffusers import StableDiffusionPipeline

from rlft.config import build
from rlft.policy import Policy
from rlft.train import train
from tests.conftest import FAST, compose_config


def test_lora_export_loads_into_a_diffusers_pipeline(tmp_path):
    cfg = compose_config([*FAST, "model=tiny_lora", f"output_root={tmp_path}"])
    train(cfg, tmp_path / "run")
    export = tmp_path / "run" / "export"
    assert (export / "lora" / "pytorch_lora_weights.safetensors").is_file()

    # the trained policy, rebuilt from the base model and the checkpoint's trainable weights
    trained = Policy(build(cfg.model.components), lora=cfg.model.lora)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    missing, unexpected = trained.load_state_dict(
        {k.removeprefix("policy."): v for k, v in state.items()}, strict=False
    )
    assert not unexpected and all("lora_" not in key for key in missing)

    pipe = StableDiffusionPipeline.from_pretrained(export / "base")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([981, 21])
    embeds = trained.encode_prompts(["a cat", "a dog"])
    with torch.no_grad():
        base_out = pipe.unet(x, t, embeds).sample
        pipe.load_lora_weights(export / "lora")
        lora_out = pipe.unet(x, t, embeds).sample
        trained_out = trained.unet(x, t, embeds).sample
    assert not torch.allclose(base_out, trained_out, atol=1e-4)  # training moved the adapters
    torch.testing.assert_close(lora_out, trained_out, rtol=1e-5, atol=1e-5)
    images = pipe(["a cat"], num_inference_steps=2, guidance_scale=5.0, output_type="pt", height=32, width=32).images
    assert images.shape == (1, 3, 32, 32)


def test_full_fine_tuning_exports_a_pipeline(tmp_path):
    cfg = compose_config([*FAST, "model=tiny", f"output_root={tmp_path}"])
    train(cfg, tmp_path / "run")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "run" / "export" / "pipeline")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = "conv_out.weight"
    torch.testing.assert_close(pipe.unet.state_dict()[key], state[f"policy.unet.{key}"])

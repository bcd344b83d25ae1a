"""The SD3 family (rlft/families/sd3.py) on the tiny offline model: the policy computes what diffusers'
StableDiffusion3Pipeline computes, its importance ratio is exactly 1 before an update, the reference is
the base model, exported adapters load back in diffusers, and a missing model fails in one line."""

from __future__ import annotations

import pytest
import torch

from rlft.errors import ConfigError
from rlft.families.conditioning import TextConditioning
from rlft.families.sd3 import SD3_SUBFOLDERS, SD3Policy, build_tiny_sd3, load_sd3, sd3_pipeline
from rlft.streams import RandomStream

PROMPTS = ["a red cube", "two blue spheres on grass"]
GUIDANCE = 4.5


def perturb_lora(policy: SD3Policy, seed: int = 0) -> None:
    """An update's worth of change: random B matrices (B = 0 at init keeps the base model)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)


def sample_chain(policy: SD3Policy, sigmas: torch.Tensor, cond: TextConditioning, seed: int = 3):
    """A chain of SDE steps with noise from a RandomStream: the states, actions and log-probs."""
    stream = RandomStream(seed)
    x = stream.normal((len(cond), *policy.latent_shape))
    states, log_probs = [x], []
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            step = policy.transition(x, i, sigmas, cond, GUIDANCE, noise=stream.normal(x.shape))
            x = step.sample
            states.append(x)
            log_probs.append(step.log_prob)
    return states, log_probs


def test_the_policy_computes_what_the_diffusers_pipeline_computes():
    components = build_tiny_sd3(seed=0, t5=True)
    assert components.text_encoder_3 is not None and components.scheduler.config.shift == 3.0
    policy = SD3Policy(components)
    pipe = sd3_pipeline(policy)
    cond = policy.encode_prompts(PROMPTS)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, None, None, do_classifier_free_guidance=True
    )
    assert torch.equal(cond.hidden_states, embeds) and torch.equal(cond.pooled, pooled)
    # the empty prompt, encoded once at batch 1 (the pipeline encodes it per batch: float noise apart)
    unconditional = policy.negative_conditioning.expand(2)
    torch.testing.assert_close(unconditional.hidden_states, negative, rtol=0, atol=1e-6)
    torch.testing.assert_close(unconditional.pooled, negative_pooled, rtol=0, atol=1e-6)
    assert cond.hidden_states.shape == (2, 77 + 256, 32) and cond.pooled.shape == (2, 64)

    torch.manual_seed(0)
    x = torch.randn(2, *policy.latent_shape)
    steps = 2
    expected = pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=unconditional.hidden_states,
        negative_pooled_prompt_embeds=unconditional.pooled,
        latents=x,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        output_type="latent",
    ).images
    sigmas = policy.sigmas(steps)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and len(sigmas) == steps + 1 and bool((sigmas.diff() < 0).all())
    latents = x
    with torch.no_grad():
        for i in range(steps):
            step = policy.ode_step(latents, i, sigmas, cond, GUIDANCE)
            assert step.log_prob is None
            latents = step.sample
    assert torch.equal(latents, expected)

    images = policy.decode(latents)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    expected_images = pipe.vae.decode(latents / 1.5305 + 0.0609).sample
    torch.testing.assert_close(images, (expected_images / 2 + 0.5).clamp(0, 1), rtol=0, atol=0)


def test_ratio_is_exactly_one_before_an_update_and_the_reference_is_the_base_model():
    policy = SD3Policy(build_tiny_sd3(seed=1))
    base = SD3Policy(build_tiny_sd3(seed=1), lora=None)
    assert policy.text_encoder_3 is None
    trainable = policy.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all("lora_" in n for n, p in policy.transformer.named_parameters() if p.requires_grad)
    sigmas = policy.sigmas(3)
    cond = policy.encode_prompts(PROMPTS)
    states, log_probs = sample_chain(policy, sigmas, cond)
    assert all(lp.shape == (2,) and torch.isfinite(lp).all() for lp in log_probs)

    def rescore(index_as_tensor: bool = False, reference: bool = False) -> list[torch.Tensor]:
        with torch.no_grad():
            return [
                policy.transition(
                    states[i], torch.full((2,), i) if index_as_tensor else i, sigmas, cond, GUIDANCE,
                    next_latents=states[i + 1], reference=reference,
                ).log_prob
                for i in range(len(sigmas) - 1)
            ]  # fmt: skip

    # every stored action re-scored: bit-identical, with an int step or per-sample step indices
    assert all(torch.equal(a, b) for a, b in zip(rescore(), log_probs, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(rescore(index_as_tensor=True), log_probs, strict=True))
    x = states[1]
    with torch.no_grad():
        base_velocity = base.velocity(x, 1, sigmas, cond, GUIDANCE)
        assert torch.equal(policy.velocity(x, 1, sigmas, cond, GUIDANCE), base_velocity)

    perturb_lora(policy)
    moved = rescore()
    assert all(not torch.equal(a, b) for a, b in zip(moved, log_probs, strict=True))
    with torch.no_grad():
        assert not torch.equal(policy.velocity(x, 1, sigmas, cond, GUIDANCE), base_velocity)
        assert torch.equal(policy.velocity(x, 1, sigmas, cond, GUIDANCE, reference=True), base_velocity)
    assert all(torch.equal(a, b) for a, b in zip(rescore(reference=True), log_probs, strict=True))
    with pytest.raises(RuntimeError, match="keep_reference"):
        base.velocity(x, 1, sigmas, cond, GUIDANCE, reference=True)


def test_exported_lora_loads_back_into_a_diffusers_pipeline(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    policy = SD3Policy(build_tiny_sd3(seed=2))
    perturb_lora(policy, seed=1)
    out = policy.export(tmp_path / "export")
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "BASE_MODEL.txt").read_text().strip() == str(out / "base")

    # (a model without T5 saves none: diffusers loads it given text_encoder_3=None, tokenizer_3=None)
    pipe = StableDiffusion3Pipeline.from_pretrained(out / "base", text_encoder_3=None, tokenizer_3=None)
    torch.manual_seed(0)
    x, t = torch.randn(2, *policy.latent_shape), torch.tensor([700.0, 700.0])
    cond = policy.encode_prompts(PROMPTS)
    kwargs = {"encoder_hidden_states": cond.hidden_states, "pooled_projections": cond.pooled, "return_dict": False}
    with torch.no_grad():
        trained = policy.transformer(hidden_states=x, timestep=t, **kwargs)[0]
        with policy.weights(reference=True) as base:
            base_out = base(hidden_states=x, timestep=t, **kwargs)[0]
        assert torch.equal(pipe.transformer(hidden_states=x, timestep=t, **kwargs)[0], base_out)
        pipe.load_lora_weights(out / "lora")
        loaded = pipe.transformer(hidden_states=x, timestep=t, **kwargs)[0]
    assert not torch.allclose(trained, base_out, atol=1e-3)
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)


def test_text_conditioning_indexes_selects_and_concatenates_along_the_batch():
    cond = TextConditioning(torch.arange(24.0).reshape(4, 3, 2), torch.arange(8.0).reshape(4, 2))
    assert len(cond) == 4 and len(cond[1]) == 1 and torch.equal(cond[-1].pooled, cond.pooled[3:])
    picked = cond.index_select(torch.tensor([2, 0]))
    assert torch.equal(picked.hidden_states, cond.hidden_states[[2, 0]])
    assert torch.equal(picked.pooled, cond.pooled[[2, 0]])
    both = TextConditioning.cat([cond[:1].expand(2), picked])
    assert both.hidden_states.shape == (4, 3, 2) and torch.equal(both.pooled[:2], cond.pooled[[0, 0]])
    sd1 = TextConditioning(cond.hidden_states)  # SD 1.x: no pooled embedding
    assert TextConditioning.cat([sd1, sd1[1:]]).pooled is None and sd1[torch.tensor([1])].pooled is None
    with pytest.raises(ValueError, match="pooled"):
        TextConditioning.cat([cond, sd1])


def test_load_sd3_without_the_model_fails_in_one_line_naming_model_path(tmp_path):
    with pytest.raises(ConfigError) as missing:
        load_sd3()  # HF_HUB_OFFLINE=1 (tests/conftest.py), nothing in the cache
    message = str(missing.value.at("model.path"))
    assert "\n" not in message and message.startswith("model.path=null")
    assert "stabilityai/stable-diffusion-3.5-medium" in message and "HF_HUB_OFFLINE=1" in message
    assert "model_index.json" in message and ", ".join(SD3_SUBFOLDERS) in message
    with pytest.raises(ConfigError, match=f"model.path={tmp_path}: .*model_index.json not found") as empty:
        try:
            load_sd3(path=str(tmp_path), t5=False)
        except ConfigError as error:
            raise error.at("model.path") from None
    assert "text_encoder_3" not in str(empty.value)

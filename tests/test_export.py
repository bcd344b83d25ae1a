"""Export (rlft/export.py): diffusers-format weights and a model card, at the end of a run and from
any checkpoint with `python -m rlft.export`, which loads back into a diffusers pipeline."""

import http.server
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlft.config import build
from rlft.export import RunRecord, main, model_card
from rlft.policy import Policy
from rlft.train import train
from tests.conftest import FAST, compose_config

LORA = Path("lora") / "pytorch_lora_weights.safetensors"
# A LoRA run of two epochs with a showcase: one training run shared by the tests below.
LORA_RUN = [
    *(o for o in FAST if not o.startswith("epochs=")),
    "epochs=2",
    "model=tiny_lora",
    "showcase.samples=2",
    "showcase.batch_size=2",
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    train(compose_config([*LORA_RUN, f"output_root={root}"]), root / "run")
    return root / "run"


def trained_policy(checkpoint: Path) -> Policy:
    """The policy of a checkpoint, rebuilt here independently of rlft.export."""
    state = torch.load(checkpoint, weights_only=True)
    config = compose_config(LORA_RUN)
    policy = Policy(build(config.model.components), lora=config.model.lora)
    missing, unexpected = policy.load_state_dict(
        {k.removeprefix("policy."): v for k, v in state["state_dict"].items()}, strict=False
    )
    assert not unexpected and all("lora_" not in key for key in missing)
    return policy


def card_pipeline(export: Path, generate: bool = False, size: int = 32):
    """The pipeline the model card's own example builds (its python block, run as written; without
    its last line, the generation, unless `generate`: then its image must be `size` pixels square)."""
    (code,) = re.findall(r"```python\n(.*?)```", (export / "README.md").read_text(), re.DOTALL)
    assert code.splitlines()[-1].startswith("image = pipe(")
    script = export.parent / f"{export.name}_example.py"
    script.write_text(code if generate else "\n".join(code.splitlines()[:-1]))
    namespace = runpy.run_path(str(script))
    if generate:
        assert namespace["image"].size == (size, size)
    return namespace["pipe"]


def unet_outputs(unet, policy: Policy) -> torch.Tensor:
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([981, 21])
    with torch.no_grad():
        return unet(x, t, policy.encode_prompts(["a cat", "a dog"])).sample


def one_line_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("rlft: error: "), err
    return err


def test_the_end_of_run_export_loads_with_its_model_cards_example(lora_run):
    export = lora_run / "export"
    assert (export / LORA).is_file() and (export / "base" / "model_index.json").is_file()
    trained = trained_policy(lora_run / "checkpoints" / "last.ckpt")
    pipe = card_pipeline(export, generate=True)  # the base from base/, the adapters loaded with load_lora_weights
    base = Policy(build(compose_config(LORA_RUN).model.components), lora=None)
    assert not torch.allclose(unet_outputs(base.unet, trained), unet_outputs(trained.unet, trained), atol=1e-4)
    torch.testing.assert_close(
        unet_outputs(pipe.unet, trained), unet_outputs(trained.unet, trained), rtol=1e-5, atol=1e-5
    )


def test_model_card_metadata_and_body(lora_run):
    text = (lora_run / "export" / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "diffusers" and "base_model" not in meta  # built offline: no hub id
    assert {"text-to-image", "lora", "reinforcement-learning", "rlft", "ddpo"} <= set(meta["tags"])
    history = torch.load(lora_run / "checkpoints" / "last.ckpt", weights_only=True)["rlft"]["history"]
    showcase = yaml.safe_load((lora_run / "showcase.json").read_text())
    assert "| Algorithm | `ddpo` (`rlft.algorithms.DDPO`) |" in body
    assert "| Reward | `jpeg_compressibility` (`rlft.rewards.JpegCompressibility`) |" in body
    assert "| Epochs trained | 2 |" in body and "LoRA (rank 4 on to_k, to_q, to_v, to_out.0)" in body
    assert (
        f"| reward (jpeg_compressibility) | {history[-1]['reward_mean']:.4f} | {history[-1]['reward_std']:.4f} |"
        in body
    )
    before, after = showcase["before"]["reward_mean"], showcase["after"]["reward_mean"]
    assert f"| reward (jpeg_compressibility) | {before:.4f} | {after:.4f} |" in body
    assert "not started by `python -m rlft`" in body  # trained in-process: no command line recorded
    assert yaml.safe_load((lora_run / "export" / "rlft_config.yaml").read_text())["epochs"] == 2


def test_export_of_an_earlier_epoch(lora_run, capsys):
    main([str(lora_run / "checkpoints" / "epoch=0000.ckpt")])
    export = lora_run / "export-epoch=0000"
    assert f"exported epoch 0 of {lora_run / 'checkpoints' / 'epoch=0000.ckpt'} to {export}" in capsys.readouterr().out
    first, last = (
        trained_policy(export.parent / "checkpoints" / "epoch=0000.ckpt"),
        trained_policy(lora_run / "checkpoints" / "last.ckpt"),
    )
    pipe = card_pipeline(export)
    torch.testing.assert_close(unet_outputs(pipe.unet, first), unet_outputs(first.unet, first), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unet_outputs(pipe.unet, first), unet_outputs(last.unet, last), atol=1e-5)
    body = (export / "README.md").read_text()
    history = torch.load(lora_run / "checkpoints" / "epoch=0000.ckpt", weights_only=True)["rlft"]["history"]
    assert len(history) == 1 and f"| {history[0]['reward_mean']:.4f} |" in body
    assert "| Epochs trained | 1 of the run's 2 (checkpoint `epoch=0000.ckpt`) |" in body
    assert "| not recorded |" in body  # the after-training showcase is not this epoch's


def test_export_of_a_killed_run_and_its_command(lora_run, tmp_path):
    """A killed run: checkpoints, but no end-of-run files; its command from Hydra's record."""
    run = tmp_path / "killed"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("export*"))
    for name in ("config.yaml", "final_metrics.json", "showcase.json"):
        (run / name).unlink()
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=tiny_lora", "epochs=5", "resume=auto"]))
    main([str(run), "--out", str(tmp_path / "out")])
    exported, final = load_file(tmp_path / "out" / LORA), load_file(lora_run / "export" / LORA)
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    body = (tmp_path / "out" / "README.md").read_text()
    assert "```bash\npython -m rlft model=tiny_lora epochs=5\n```" in body  # a rerun is a new run: no resume=
    assert "| not recorded |" in body


def test_full_fine_tuning_exports_a_pipeline(tmp_path):
    cfg = compose_config([*FAST, "model=tiny", f"output_root={tmp_path}"])
    train(cfg, tmp_path / "run")
    export = tmp_path / "run" / "export"
    pipe = card_pipeline(export)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = "conv_out.weight"
    torch.testing.assert_close(pipe.unet.state_dict()[key], state[f"policy.unet.{key}"])
    meta = yaml.safe_load((export / "README.md").read_text().split("---\n")[1])
    assert "lora" not in meta["tags"] and "full fine-tuning of the UNet" in (export / "README.md").read_text()


# A GRPO run of the tiny SD3 (no T5; its zeros are 8 tokens) at 8 px instead of its native 16: one
# epoch of one group of 4 images, 3 steps.
SD3_RUN = [*FAST, "model=tiny_sd3", "algorithm=grpo", "+model.policy.resolution=8"]


def test_an_sd3_run_exports_its_lora_with_a_card_that_loads_it_in_stable_diffusion_3(tmp_path, capsys):
    from rlft.families.sd3 import SD3Policy
    from rlft.train import family_options

    cfg = compose_config([*SD3_RUN, f"output_root={tmp_path}"])
    train(cfg, tmp_path / "run")
    main([str(tmp_path / "run"), "--out", str(tmp_path / "out")])  # python -m rlft.export RUN_DIR
    export = tmp_path / "out"
    assert f"to {export}" in capsys.readouterr().out
    assert (export / LORA).is_file() and (export / "base" / "model_index.json").is_file()
    card = (export / "README.md").read_text()
    assert 'StableDiffusion3Pipeline.from_pretrained(f"{path}/base", text_encoder_3=None, tokenizer_3=None)' in card
    assert "height=8, width=8, max_sequence_length=8, guidance_scale=1.0).images[0]" in card
    assert "| Algorithm | `grpo` (`rlft.algorithms.GRPO`) |" in card and "LoRA (rank 32 on attn.to_q" in card

    pipe = card_pipeline(export, generate=True, size=8)  # base + adapters, one 8 px image generated
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    trained = SD3Policy(build(cfg.model.components), lora=cfg.model.lora, **family_options(cfg.model))
    trained.load_state_dict({k.removeprefix("policy."): v for k, v in state.items()}, strict=False)
    base = SD3Policy(build(cfg.model.components), lora=None, **family_options(cfg.model))
    cond = trained.encode_prompts(["a cat", "a dog"])
    x = torch.randn(2, *trained.latent_shape, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 4, 8, 8)

    def outputs(transformer) -> torch.Tensor:
        with torch.no_grad():
            return transformer(
                hidden_states=x,
                timestep=torch.tensor([900.0, 100.0]),
                encoder_hidden_states=cond.hidden_states,
                pooled_projections=cond.pooled,
            ).sample

    assert not torch.allclose(outputs(base.transformer), outputs(trained.transformer), atol=1e-4)  # it trained
    torch.testing.assert_close(outputs(pipe.transformer), outputs(trained.transformer), rtol=1e-5, atol=1e-5)
    # full fine-tuning of an SD3: the card names the transformer and loads the whole pipeline
    config = yaml.safe_load((export / "rlft_config.yaml").read_text())
    config["model"]["lora"] = None
    full = model_card(RunRecord(config=config, epochs_trained=1), tmp_path, None)
    assert "| Fine-tuning | full fine-tuning of the transformer |" in full
    assert 'StableDiffusion3Pipeline.from_pretrained(f"{path}/pipeline", text_encoder_3=None' in full


def test_model_card_of_a_hub_model_pushed_to_the_hub(tmp_path):
    """A LoRA of Stable Diffusion loaded from a local copy: the card names the hub id as base_model,
    and a card for the Hub loads the adapters from the repository."""
    config = compose_config(["model=sd15", "model.path=/data/sd15"])
    from omegaconf import OmegaConf

    record = RunRecord(config=OmegaConf.to_container(config, resolve=True), epochs_trained=3)
    card = model_card(record, tmp_path, "/data/sd15", repo_id="someone/sd15-ddpo")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5" and "lora" in meta["tags"]
    assert 'path = snapshot_download("someone/sd15-ddpo")' in card
    assert 'DiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")' in card
    assert 'pipe.load_lora_weights(f"{path}/lora")' in card and "loaded from a local copy, `/data/sd15`" in card


def test_bad_paths_give_one_line(tmp_path, capsys):
    assert "no such file or directory" in one_line_error(capsys, str(tmp_path / "missing"))
    assert "not an rlft run directory" in one_line_error(capsys, str(tmp_path))
    (tmp_path / "started" / "checkpoints").mkdir(parents=True)
    assert "the run has no checkpoint yet" in one_line_error(capsys, str(tmp_path / "started"))
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x00 not a checkpoint")
    assert "cannot be read as a checkpoint" in one_line_error(capsys, str(tmp_path / "corrupt.ckpt"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    assert "not an rlft checkpoint" in one_line_error(capsys, str(tmp_path / "other.ckpt"))


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Invalid credentials in Authorization header"}')

    def log_message(self, *args):
        pass


def test_push_to_hub_fails_in_one_line_offline_unreachable_or_refused(lora_run):
    def push(**env) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "rlft.export", str(lora_run), "--push-to-hub", "someone/model"],
            env={**os.environ, **env},
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("rlft: error: --push-to-hub someone/model: "), result.stderr
        return result.stderr

    assert "HF_HUB_OFFLINE=1 is set" in push(HF_HUB_OFFLINE="1")
    online = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_not_a_real_token"}
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert "cannot reach the Hugging Face Hub" in push(**online, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refused = push(**online, HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert "refused the token (401" in refused and "hf auth login" in refused

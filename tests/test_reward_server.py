"""The reward server and its client on loopback: a real `python -m rlft.serve` process."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from rlft.errors import RewardServerError
from rlft.rewards import Brightness, RemoteReward
from rlft.rewards.wire import encode_request
from tests.conftest import pinned, run_cli


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server process: no token unless the test gives one."""
    env = {key: value for key, value in os.environ.items() if key != "RLFT_REWARD_TOKEN"}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _drain(stream) -> None:
    with stream:
        stream.read()


def start_server(tmp_path, *overrides, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "rlft.serve", "port=0", *overrides],
        cwd=tmp_path,
        env=env or server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        line = process.stdout.readline()
        if match := re.search(r"on (http://\S+)", line):
            # Keep reading its log (a line per request): a full pipe would block the server. The
            # reader closes the pipe at its end (the server's exit), so that no file is left open.
            threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
            return process, match.group(1)
        assert process.poll() is None, "the server exited before serving"
    raise AssertionError("the server did not start")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, url = start_server(tmp_path_factory.mktemp("server"), "reward=brightness")
    yield url
    process.kill()
    process.wait()


def random_images(seed: int, count: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 24, 24, 3), dtype=np.uint8)


def test_remote_scores_equal_local_scores(server):
    images = random_images(0)
    prompts = [f"prompt {i}" for i in range(5)]
    remote = RemoteReward(url=server, batch_size=2).score_uint8(images, prompts, [{"i": i} for i in range(5)])
    np.testing.assert_array_equal(remote, Brightness().score_uint8(images, prompts, [{}] * 5))  # PNG is lossless
    assert requests.get(f"{server}/health", timeout=5).json() == {"status": "ok", "reward": "brightness"}


def test_concurrent_clients(server):
    client = RemoteReward(url=server, batch_size=3)

    def one(seed):
        images = random_images(seed, count=7)
        return client.score_uint8(images, ["p"] * 7, [{}] * 7), Brightness().score_uint8(images, ["p"] * 7, [{}] * 7)

    with ThreadPoolExecutor(8) as pool:
        for remote, local in pool.map(one, range(16)):
            np.testing.assert_array_equal(remote, local)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"prompts": ["a"]}', "'images'"),
        (b'{"images": ["%%%"], "prompts": ["a"]}', "base64-encoded PNG"),
        (b'{"images": ["aGVsbG8="], "prompts": ["a"]}', "base64-encoded PNG"),  # base64, not a PNG
        (None, "one each per image"),
    ],
)
def test_malformed_requests_get_400_and_the_server_lives_on(server, body, fragment):
    if body is None:  # two images, one prompt
        import json

        body = json.dumps({**encode_request(random_images(1, 2), ["a", "b"], [{}, {}]), "prompts": ["a"]}).encode()
    response = requests.post(f"{server}/score", data=body, timeout=10)
    assert response.status_code == 400 and fragment in response.json()["error"]
    assert requests.get(f"{server}/health", timeout=5).status_code == 200
    assert requests.get(f"{server}/score", timeout=5).status_code == 405


def test_unreachable_server_is_one_clear_error():
    client = RemoteReward(url="http://127.0.0.1:9", retries=2, backoff=0.01, timeout=2)
    start = time.time()
    with pytest.raises(RewardServerError, match=r"did not answer .* after 3 attempts.*rlft.serve"):
        client.score_uint8(random_images(2, 1), ["p"], [{}])
    assert time.time() - start < 10


def test_a_server_that_dies_mid_run_stops_training_with_its_checkpoint(tmp_path):
    """Training on a remote reward; the server is killed after the first checkpoint: the run ends
    with one message, the checkpoint is intact, and the run resumes once a server is back."""
    process, url = start_server(tmp_path, "reward=brightness")
    port = url.rsplit(":", 1)[1]
    args = [
        "reward=remote",
        f"reward.url={url}",
        "reward.retries=1",
        "reward.backoff=0.05",
        "reward.timeout=5",
        "epochs=4",
        "sample.num_steps=3",
        "sample.batch_size=2",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=1",
        f"output_root={tmp_path / 'out'}",
    ]
    training = subprocess.Popen(
        [sys.executable, "-m", "rlft", *pinned(args)],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list((tmp_path / "out").glob("runs/*/checkpoints/epoch=0000.ckpt")):
        assert training.poll() is None and time.time() < deadline, training.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, stderr = training.communicate(timeout=300)
    assert training.returncode == 2, stderr[-2000:]
    assert "rlft: error: the reward server at" in stderr and "resume=auto" in stderr
    assert "Traceback" not in stderr
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 <= checkpoint["epoch"] < 3

    restarted, _ = start_server(tmp_path, "reward=brightness", f"port={port}")
    try:
        result = run_cli([*args, "resume=auto"], cwd=tmp_path)
    finally:
        restarted.kill()
        restarted.wait()
    assert "resuming" in result.stdout + result.stderr
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header and every epoch once


def test_served_llava_bertscore_equals_the_local_reward(tmp_path):
    """The alignment reward hosted by the server (tiny LLaVA + BERT) scores as it does in-process."""
    from rlft.rewards import LlavaBertScore
    from rlft.rewards.llava import tiny_bertscore, tiny_llava

    process, url = start_server(tmp_path, "reward=llava_bertscore_tiny")
    try:
        images = random_images(3, count=3)[:, :, :, :].repeat(2, axis=1).repeat(2, axis=2)[:, :32, :32]
        prompts = ["a cat", "a dog riding a bike", "an owl"]
        remote = RemoteReward(url=url, batch_size=2).score_uint8(images, prompts, [{}] * 3)
    finally:
        process.kill()
        process.wait()
    local = LlavaBertScore(tiny_llava(seed=5, max_new_tokens=8), tiny_bertscore(seed=6), device="cpu")
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    expected = torch.cat([local(pixels[:2], prompts[:2], [{}] * 2), local(pixels[2:], prompts[2:], [{}])])
    np.testing.assert_allclose(remote, expected.numpy(), rtol=1e-5, atol=1e-6)

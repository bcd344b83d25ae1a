"""The reward server under bad clients: a real `python -m rlft.serve` process on loopback, many
concurrent clients, two thirds of their requests malformed or hostile; and its token."""

from __future__ import annotations

import base64
import collections
import gzip
import io
import itertools
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from rlft.errors import RewardServerError
from rlft.rewards import Brightness, RemoteReward
from rlft.rewards.wire import Limits, OverLimit, decode_image, encode_image, encode_request
from rlft.serve import exposure_problem
from tests.test_reward_server import server_env, start_server

TOKEN = "stress-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Small limits, so that every limit is crossed by a cheap request.
LIMITS = [
    "max_request_mb=3",
    "max_images=32",
    "max_image_pixels=1000000",
    "max_request_pixels=4000000",
    "max_in_flight=4",
    "max_waiting=8",  # 40 clients overflow it: the 503 path is exercised too
]
CLIENTS, REQUESTS_EACH = 40, 5


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A genuine 1-bit PNG of width x height black pixels: about 20 kB that decode to 432 MB of RGB."""
    rows = (b"\x00" + bytes((width + 7) // 8)) * height  # filter byte 0 and the packed row
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def body(images: list[str], prompts: list, metadata=None) -> bytes:
    request = {"images": images, "prompts": prompts}
    if metadata is not None:
        request["metadata"] = metadata
    return json.dumps(request).encode()


def random_image(rng: np.random.Generator, height: int = 24, width: int = 24) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def malformed_requests() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    """(kind, body, extra headers, expected status, fragment of the error) for each way to be wrong."""
    rng = np.random.default_rng(0)
    image = encode_image(random_image(rng))
    jpeg = io.BytesIO()
    Image.fromarray(random_image(rng)).save(jpeg, format="JPEG")
    png = base64.b64decode(image)
    flat = encode_image(np.zeros((1000, 1000, 3), dtype=np.uint8))  # 1 Mpixel each: 5 are over 4 M
    tiny = encode_image(np.zeros((1, 1, 3), dtype=np.uint8))
    return [
        ("bad JSON", b'{"images": [', {}, 400, "not JSON"),
        ("empty body", b"", {}, 400, "not JSON"),
        ("not UTF-8", b"\xff\xfe\xfa\xfb", {}, 400, "not JSON"),
        ("deep list", b"[" * 50_000, {}, 400, "nested too deeply"),
        ("deep object", b'{"a":' * 30_000, {}, 400, "nested too deeply"),
        ("huge integer", body([image], ["a"], [{"n": 0}]).replace(b"0}", b"9" * 5000 + b"}"), {}, 400, "not JSON"),
        ("a list body", b"[1, 2]", {}, 400, "JSON object"),
        ("no images", b'{"prompts": ["a"]}', {}, 400, "'images'"),
        ("images a string", body(image, ["a"]), {}, 400, "'images'"),
        ("images of numbers", body([1, 2], ["a", "b"]), {}, 400, "'images'"),
        ("prompts of numbers", body([image], [3]), {}, 400, "'prompts'"),
        ("prompts a number", b'{"images": ["%s"], "prompts": 5}' % image.encode(), {}, 400, "'prompts'"),
        ("metadata an object", body([image], ["a"], {"a": 1}), {}, 400, "'metadata'"),
        ("metadata of numbers", body([image], ["a"], [1]), {}, 400, "'metadata'"),
        ("bad base64", body(["%%%"], ["a"]), {}, 400, "base64-encoded PNG"),
        ("base64 of text", body([b64(b"hello")], ["a"]), {}, 400, "base64-encoded PNG"),
        ("a JPEG", body([b64(jpeg.getvalue())], ["a"]), {}, 400, "base64-encoded PNG"),
        ("truncated PNG", body([b64(png[: len(png) // 2])], ["a"]), {}, 400, "base64-encoded PNG"),
        ("mismatched lengths", body([image, image], ["a"]), {}, 400, "one each per image"),
        ("mismatched sizes", body([image, encode_image(random_image(rng, 16, 16))], ["a", "b"]), {}, 400, "same size"),
        ("2 MB prompt", body([image], ["x" * 2_000_000]), {}, 413, "max_prompt_chars=10000"),
        ("4 MB body", b" " * (4 * 2**20), {}, 413, "max_request_mb=3"),
        ("12000x12000 PNG", body([b64(bomb_png())], ["a"]), {}, 413, "max_image_pixels=1000000"),
        ("33 images", body([tiny] * 33, ["a"] * 33), {}, 413, "max_images=32"),
        ("5 Mpixels", body([flat] * 5, ["a"] * 5), {}, 413, "max_request_pixels=4000000"),
        ("200k JSON values", body([image], ["a"], [{"a": [0] * 200_000}]), {}, 413, "max_json_items=100000"),
        ("broken gzip", b"not gzip", {"Content-Encoding": "gzip"}, 400, "could not be read"),
        ("no token", body([image], ["a"]), {"Authorization": ""}, 401, "Bearer"),
        ("wrong token", body([image], ["a"]), {"Authorization": "Bearer nope"}, 401, "wrong token"),
    ]


def post(url: str, data: bytes, headers: dict[str, str], deadline: float) -> tuple[int, dict, int]:
    """Final status and JSON of a POST, retrying 503s after their Retry-After; and how many 503s."""
    busy = 0
    while True:
        response = requests.post(f"{url}/score", data=data, headers={**AUTH, **headers}, timeout=30)
        if response.status_code != 503 or time.time() > deadline:
            return response.status_code, response.json(), busy
        busy += 1
        time.sleep(float(response.headers["Retry-After"]))


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    process, url = start_server(
        tmp_path_factory.mktemp("stress"), "reward=brightness", *LIMITS, env=server_env(RLFT_REWARD_TOKEN=TOKEN)
    )
    yield process, url
    process.kill()
    process.wait()


def test_many_bad_clients_get_4xx_and_good_ones_right_scores(guarded_server):
    process, url = guarded_server
    bad = malformed_requests()
    rng = np.random.default_rng(1)
    plan = []  # (kind, body, headers, expected status, fragment, expected scores)
    for index, kind in zip(range(CLIENTS * REQUESTS_EACH), itertools.cycle(["valid", "bad", "bad"]), strict=False):
        if kind == "valid":
            count, (height, width) = int(rng.integers(1, 9)), [(24, 24), (32, 16), (8, 40)][index % 3]
            images = np.stack([random_image(rng, height, width) for _ in range(count)])
            prompts = [f"p{i}" for i in range(count)]
            expected = Brightness().score_uint8(images, prompts, [{}] * count)
            request = json.dumps(encode_request(images, prompts, [{}] * count)).encode()
            plan.append(("valid", request, {}, 200, "", expected))
        else:
            plan.append((*bad[(index // 3) % len(bad)], None))
    # Interleave: client c sends requests c, c + CLIENTS, ... so that every client mixes kinds.
    per_client = [plan[c::CLIENTS] for c in range(CLIENTS)]

    health_latency: list[float] = []
    stop = threading.Event()

    def watch_health():
        while not stop.is_set():
            start = time.perf_counter()
            assert requests.get(f"{url}/health", timeout=10).status_code == 200
            health_latency.append(time.perf_counter() - start)
            time.sleep(0.05)

    def client(requests_of_one):
        return [(item, post(url, item[1], item[2], deadline)) for item in requests_of_one]

    baseline = peak_rss_mb(process.pid)
    start = time.perf_counter()
    deadline = time.time() + 25  # past it, a 503 counts as the answer (and fails below)
    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [result for client_results in pool.map(client, per_client) for result in client_results]
    stop.set()
    watcher.join(timeout=15)
    seconds = time.perf_counter() - start

    statuses = collections.Counter(status for _, (status, _, _) in results)
    busy = sum(retries for _, (_, _, retries) in results)
    for (kind, _, _, status, fragment, expected), (got, answer, _) in results:
        assert got == status, (kind, got, answer)
        if expected is not None:
            np.testing.assert_array_equal(np.asarray(answer["scores"], dtype=np.float32), expected)
        else:
            assert fragment in answer["error"], (kind, answer)
    assert process.poll() is None
    assert requests.get(f"{url}/health", timeout=5).json() == {"status": "ok", "reward": "brightness"}
    peak = peak_rss_mb(process.pid)
    print(
        f"\nstress: {len(results)} requests from {CLIENTS} clients in {seconds:.1f} s; final statuses "
        f"{dict(sorted(statuses.items()))}; {busy} 503s retried; /health slowest {max(health_latency):.3f} s "
        f"over {len(health_latency)} polls; server peak RSS {peak:.0f} MB ({baseline:.0f} MB before)"
    )
    assert statuses[200] == sum(item[0] == "valid" for item in plan) and 500 not in statuses
    assert max(health_latency) < 5
    assert peak < 1536


def test_the_token(guarded_server, monkeypatch):
    _, url = guarded_server
    images = np.random.default_rng(2).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    request = json.dumps(encode_request(images, ["a", "b", "c"], [{}] * 3))
    assert requests.post(f"{url}/score", data=request, timeout=10).status_code == 401
    wrong = requests.post(f"{url}/score", data=request, headers={"Authorization": "Bearer x"}, timeout=10)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    right = requests.post(f"{url}/score", data=request, headers=AUTH, timeout=10)
    expected = Brightness().score_uint8(images, ["a"] * 3, [{}] * 3)
    np.testing.assert_array_equal(np.asarray(right.json()["scores"], dtype=np.float32), expected)
    assert requests.get(f"{url}/health", timeout=5).status_code == 200  # health needs no token

    monkeypatch.delenv("RLFT_REWARD_TOKEN", raising=False)
    np.testing.assert_array_equal(RemoteReward(url=url, token=TOKEN).score_uint8(images, ["a"] * 3, [{}] * 3), expected)
    with pytest.raises(RewardServerError, match=r"requires a token: set reward.token=.*RLFT_REWARD_TOKEN"):
        RemoteReward(url=url, retries=0).score_uint8(images, ["a"] * 3, [{}] * 3)
    with pytest.raises(RewardServerError, match=r"rejected the token it was sent: set reward.token="):
        RemoteReward(url=url, token="nope", retries=0).score_uint8(images, ["a"] * 3, [{}] * 3)
    monkeypatch.setenv("RLFT_REWARD_TOKEN", TOKEN)
    np.testing.assert_array_equal(RemoteReward(url=url).score_uint8(images, ["a"] * 3, [{}] * 3), expected)


def test_a_server_for_other_machines_needs_a_token(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rlft.serve", "reward=brightness", "host=0.0.0.0", "port=0"],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("rlft.serve: error: host=0.0.0.0") and "RLFT_REWARD_TOKEN" in line
    assert "allow_no_token=true" in line
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert exposure_problem(host, None, False) is None
    for host in ("0.0.0.0", "::", "10.0.0.5", "rewardhost"):
        assert exposure_problem(host, None, False) is not None
        assert exposure_problem(host, "secret", False) is None and exposure_problem(host, None, True) is None


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_oversized_png_is_refused_from_its_header():
    data = bomb_png()
    assert len(data) < 50_000 and Image.open(io.BytesIO(data)).size == (12000, 12000)
    start = time.perf_counter()
    with pytest.raises(OverLimit, match="12000x12000 = 144000000 pixels, over the server's max_image_pixels=4194304"):
        decode_image(b64(data), Limits().max_image_pixels)
    assert time.perf_counter() - start < 0.5  # nothing was decoded
    small = bomb_png(40, 30)  # the same construction decodes when small enough
    assert decode_image(b64(small), Limits().max_image_pixels).shape == (30, 40, 3)


def test_a_gzip_bomb_stops_at_the_size_limit(guarded_server):
    _, url = guarded_server
    bomb = gzip.compress(b" " * (64 * 2**20))  # 64 kB that inflate to 64 MB
    response = requests.post(f"{url}/score", data=bomb, headers={**AUTH, "Content-Encoding": "gzip"}, timeout=30)
    assert response.status_code == 413 and "max_request_mb=3" in response.json()["error"]

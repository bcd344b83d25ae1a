"""`python -m rlft.serve reward=<option> [host=...] [port=...] [token=...]`: host any configured reward
behind the small HTTP API of rlft/rewards/wire.py, so that a heavy reward runs on its own machine or
GPU and training runs use it through `reward=remote reward.url=http://<host>:<port>`.

aiohttp answers on the event loop; JSON parsing and PNG decoding run on a pool of worker threads and
scoring one batch at a time on another, so /health answers while requests are decoded and scored.
At most `max_in_flight` requests are read, decoded or scored at once and `max_waiting` more wait,
before their bodies are read; beyond that the server answers 503 with Retry-After. With the limits
of conf/serve.yaml this bounds the server's memory, whatever clients send.

A host other than loopback needs `token=<secret>` (or RLFT_REWARD_TOKEN in the environment), which
every /score request must then carry as `Authorization: Bearer <secret>`; `allow_no_token=true`
serves without one. The token travels in clear over HTTP: across untrusted networks use a tunnel.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import hydra
import numpy as np
import torch
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR, build
from rlft.errors import ConfigError, RlftError
from rlft.rewards.base import Reward
from rlft.rewards.wire import Limits, WireError, decode_request, parse_body

log = logging.getLogger("rlft.serve")

TOKEN_ENV = "RLFT_REWARD_TOKEN"
RETRY_AFTER_S = 1


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def _read_body(request: web.Request, max_bytes: int) -> bytearray | None:
    """The body (inflated if compressed), or None past `max_bytes`."""
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            return None
    return body


def _decode(raw: bytes | bytearray, limits: Limits) -> tuple[np.ndarray, list[str], list[dict]]:
    return decode_request(parse_body(raw, limits), limits)


def _score(reward: Reward, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> list[float]:
    if type(reward).score is Reward.score:
        # The base score() only turns [0, 1] floats back into these uint8: skip 5x the memory.
        scores = reward.score_uint8(images, prompts, metadata)
    else:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        scores = reward(pixels, prompts, metadata)
    scores = torch.as_tensor(scores).detach().reshape(-1).tolist()
    if len(scores) != len(images):
        raise RuntimeError(f"the reward returned {len(scores)} scores for {len(images)} images")
    return [float(s) for s in scores]


def make_app(
    reward: Reward,
    name: str,
    max_request_mb: float = 64,
    *,
    limits: Limits | None = None,
    max_in_flight: int = 4,
    max_waiting: int = 64,
    read_timeout: float = 60.0,
    token: str | None = None,
) -> web.Application:
    if max_in_flight < 1 or max_waiting < 0:
        raise ConfigError(f"max_in_flight={max_in_flight} must be >= 1 and max_waiting={max_waiting} >= 0")
    limits = limits or Limits()
    max_bytes = int(max_request_mb * 2**20)
    decoder = ThreadPoolExecutor(max_workers=min(max_in_flight, os.cpu_count() or 1), thread_name_prefix="decode")
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
    slots = asyncio.Semaphore(max_in_flight)
    waiting = 0
    expected = f"Bearer {token}".encode() if token else None

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "reward": name})

    async def score(request: web.Request) -> web.Response:
        nonlocal waiting
        if expected is not None:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                what = "a wrong token" if given else "no token"
                message = f"this server needs 'Authorization: Bearer <token>'; the request had {what}"
                return _error(401, message, {"WWW-Authenticate": "Bearer"})
        if slots.locked() and waiting >= max_waiting:
            message = f"the server is busy ({max_in_flight} requests in flight, {waiting} waiting)"
            return _error(503, message, {"Retry-After": str(RETRY_AFTER_S)})
        waiting += 1
        try:
            await slots.acquire()  # before the body is read: a waiting request holds no body in memory
        finally:
            waiting -= 1
        try:
            return await answer(request)
        finally:
            slots.release()

    async def answer(request: web.Request) -> web.Response:
        too_big = f"the body is over the server's max_request_mb={max_request_mb:g}"
        if request.content_length is not None and request.content_length > max_bytes:
            return _error(413, too_big)
        try:
            async with asyncio.timeout(read_timeout):
                raw = await _read_body(request, max_bytes)
        except TimeoutError:
            return _error(408, f"the body did not arrive within the server's read_timeout={read_timeout:g} s")
        except (HttpProcessingError, web.RequestPayloadError) as error:  # a broken chunked or compressed body
            return _error(400, f"the body could not be read ({type(error).__name__})")
        except ConnectionError:  # the client left mid-body: nobody reads this answer
            return _error(400, "the connection was lost before the body arrived")
        if raw is None:
            return _error(413, too_big)
        loop = asyncio.get_running_loop()
        try:
            images, prompts, metadata = await loop.run_in_executor(decoder, _decode, raw, limits)
        except WireError as error:
            return _error(error.status, str(error))
        del raw  # ours alone (request.read() would keep a copy on the request): freed before scoring
        try:
            scores = await loop.run_in_executor(scorer, _score, reward, images, prompts, metadata)
        except Exception as error:  # any scoring failure goes back to the client; the server lives on
            log.exception("scoring failed")
            return _error(500, f"{type(error).__name__}: {error}")
        return web.json_response({"scores": scores})

    async def shutdown(_app: web.Application) -> None:
        decoder.shutdown(wait=False, cancel_futures=True)
        scorer.shutdown(wait=False, cancel_futures=True)

    # _read_body checks the size itself; aiohttp's limit only guards its other readers.
    app = web.Application(client_max_size=max_bytes)
    app.add_routes([web.get("/health", health), web.post("/score", score)])
    app.on_shutdown.append(shutdown)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_problem(host: str, token: str | None, allow_no_token: bool) -> str | None:
    """Why the server must not start on `host` (None if it may): other machines need a token."""
    if token or allow_no_token or is_loopback(host):
        return None
    return (
        f"host={host} lets other machines use this server, so it needs a token: start it with "
        f"{TOKEN_ENV}=<secret> in the environment (or token=<secret>) and give clients the same as "
        f"reward.token or {TOKEN_ENV}; allow_no_token=true serves anyone who can reach it"
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from PIL import Image, PngImagePlugin

    name = HydraConfig.get().runtime.choices.get("reward", "reward")
    token = cfg.token if cfg.token not in (None, "") else os.environ.get(TOKEN_ENV)
    token = str(token) if token else None  # token=12345 arrives as an int
    if problem := exposure_problem(str(cfg.host), token, bool(cfg.allow_no_token)):
        print(f"rlft.serve: error: {problem}", file=sys.stderr)
        sys.exit(2)
    PngImagePlugin.MAX_TEXT_MEMORY = 2**20  # the server reads no PNG text: caps compressed-text bombs
    # decode_image refuses images over max_image_pixels from their header; PIL's own warning is noise.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        limits = Limits(
            max_images=cfg.max_images,
            max_image_pixels=cfg.max_image_pixels,
            max_request_pixels=cfg.max_request_pixels,
            max_prompt_chars=cfg.max_prompt_chars,
            max_json_items=cfg.max_json_items,
        )
        reward = build(cfg.reward, "reward")
        app = make_app(
            reward,
            name,
            cfg.max_request_mb,
            limits=limits,
            max_in_flight=cfg.max_in_flight,
            max_waiting=cfg.max_waiting,
            read_timeout=cfg.read_timeout,
            token=token,
        )
    except RlftError as error:
        print(f"rlft.serve: error: {error}", file=sys.stderr)
        sys.exit(2)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        host, port = runner.addresses[0][:2]  # the real port when port=0
        guard = "token required" if token else "no token"
        print(f"rlft.serve: reward={name} on http://{host}:{port} ({guard})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

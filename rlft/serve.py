"""`python -m rlft.serve reward=<option> [host=...] [port=...]`: host any configured reward behind
the small HTTP API of rlft/rewards/wire.py, so that a heavy reward runs on its own machine or GPU
and training runs use it through `reward=remote reward.url=http://<host>:<port>`.

aiohttp serves the requests; scoring runs one batch at a time on a worker thread, so the server
answers /health and rejects malformed requests while a batch is being scored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import hydra
import torch
from aiohttp import web
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR, build
from rlft.errors import RlftError
from rlft.rewards.base import Reward
from rlft.rewards.wire import WireError, decode_request

log = logging.getLogger("rlft.serve")


def make_app(reward: Reward, name: str, max_request_mb: float = 256) -> web.Application:
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "reward": name})

    async def score(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "the body is not JSON"}, status=400)
        try:
            images, prompts, metadata = decode_request(body)
        except WireError as error:
            return web.json_response({"error": str(error)}, status=400)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        try:
            scores = await asyncio.get_running_loop().run_in_executor(scorer, reward, pixels, prompts, metadata)
        except Exception as error:  # any scoring failure goes back to the client; the server lives on
            log.exception("scoring failed")
            return web.json_response({"error": f"{type(error).__name__}: {error}"}, status=500)
        return web.json_response({"scores": [float(s) for s in torch.as_tensor(scores).reshape(-1)]})

    async def shutdown(_app: web.Application) -> None:
        scorer.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=int(max_request_mb * 2**20))
    app.add_routes([web.get("/health", health), web.post("/score", score)])
    app.on_shutdown.append(shutdown)
    return app


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    name = HydraConfig.get().runtime.choices.get("reward", "reward")
    try:
        reward = build(cfg.reward, "reward")
    except RlftError as error:
        print(f"rlft.serve: error: {error}", file=sys.stderr)
        sys.exit(2)
    app = make_app(reward, name, cfg.max_request_mb)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        host, port = runner.addresses[0][:2]  # the real port when port=0
        print(f"rlft.serve: reward={name} on http://{host}:{port}", flush=True)
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

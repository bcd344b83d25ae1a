"""A reward computed by `python -m rlft.serve` on another process or machine."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import requests

from rlft.errors import RewardServerError
from rlft.rewards.base import Reward
from rlft.rewards.wire import encode_request

RETRIED_STATUS = {500, 502, 503, 504}
TOKEN_ENV = "RLFT_REWARD_TOKEN"


class RemoteReward(Reward):
    """POSTs batches of `batch_size` images to `url`/score. Connection errors, timeouts and 5xx
    answers are retried `retries` times with exponential backoff (`backoff` x 2^attempt seconds);
    then the run stops with one message naming the server; a busy server's Retry-After is waited
    out. `token` (else the RLFT_REWARD_TOKEN environment variable) is sent as `Authorization:
    Bearer <token>` to a server started with one. Runs no torch code, so it scores in the background
    while sampling goes on."""

    name = "remote"
    background = True

    def __init__(
        self,
        url: str = "http://127.0.0.1:8085",
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
        batch_size: int = 16,
        token: str | None = None,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.batch_size = batch_size
        # The environment keeps the secret out of the run's saved config.
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self._local = threading.local()  # one requests.Session per worker thread

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _post(self, body: str) -> list[float]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        problem, wait = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(max(self.backoff * 2 ** (attempt - 1), wait))
            wait = 0.0
            try:
                response = self._session().post(f"{self.url}/score", data=body, headers=headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as error:
                problem = f"{type(error).__name__}"
                continue
            if response.status_code == 200:
                return response.json()["scores"]
            detail = _error_of(response)
            if response.status_code == 401:
                given = "rejected the token it was sent" if self.token else "requires a token"
                raise RewardServerError(
                    f"the reward server at {self.url} {given}: set reward.token=<the server's token> "
                    f"or the {TOKEN_ENV} environment variable"
                )
            if response.status_code == 503:
                wait = _retry_after(response)
            if response.status_code not in RETRIED_STATUS:
                raise RewardServerError(f"the reward server at {self.url} rejected a request: {detail}")
            problem = f"HTTP {response.status_code}: {detail}"
        raise RewardServerError(
            f"the reward server at {self.url} did not answer ({problem}) after {self.retries + 1} attempts. "
            f"Check that `python -m rlft.serve reward=<option> port=<port>` is running there and reachable, "
            "then continue with resume=auto."
        )

    def score_uint8(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            end = start + self.batch_size
            request = encode_request(images[start:end], prompts[start:end], list(metadata[start:end]))
            scores += self._post(json.dumps(request, default=str))
        return np.asarray(scores, dtype=np.float32)


def _retry_after(response: requests.Response, most: float = 60.0) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", 0)), 0.0), most)
    except ValueError:  # an HTTP date instead of seconds: fall back to the backoff
        return 0.0


def _error_of(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text[:200]))
    except ValueError:
        return response.text[:200]

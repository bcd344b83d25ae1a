"""The reward server's wire format: JSON with images as base64 PNG (lossless, and nothing is
unpickled from the network).

POST /score  {"images": [<base64 PNG>, ...], "prompts": [str, ...], "metadata": [{...}, ...]}
             ("metadata" may be left out; the images of one request share one size)
             header `Authorization: Bearer <token>` when the server was started with a token
         ->  200 {"scores": [float, ...]}, one per image, in order
             400 {"error": "..."}  a malformed request: not JSON, nested too deep, a wrong type, an
                                   image that is not a base64 PNG, mismatched counts or sizes
             401 {"error": "..."}  a missing or wrong token
             408 {"error": "..."}  the body did not arrive within the server's read_timeout
             413 {"error": "..."}  over one of the server's limits, which the message names (max_request_mb,
                                   max_images, max_image_pixels, max_request_pixels, max_prompt_chars,
                                   max_json_items); a PNG's size is checked from its header, before decoding
             503 {"error": "..."}  the server is full (max_in_flight + max_waiting requests); retry after
                                   the `Retry-After` header's seconds
             500 {"error": "..."}  the reward itself failed
GET /health ->  200 {"status": "ok", "reward": "<name>"} (no token needed)

Every error is JSON {"error": "<reason>"}; no client mistake gets a 500.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image


class WireError(ValueError):
    """A request that does not follow the format above; `status` is the HTTP answer (400 or 413)."""

    status = 400


class OverLimit(WireError):
    """A well-formed request over one of the server's limits."""

    status = 413


@dataclass(frozen=True)
class Limits:
    """What one /score request may hold; the defaults are those of conf/serve.yaml."""

    max_images: int = 256
    max_image_pixels: int = 2048 * 2048
    max_request_pixels: int = 16 * 1024 * 1024  # 16 images of 1024x1024
    max_prompt_chars: int = 10_000
    max_json_items: int = 100_000


def encode_image(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(text: str, max_pixels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 of a base64 PNG. The size is checked from the PNG header against `max_pixels`
    and, if given, against `size` (width, height), before any pixel is decoded."""
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError as error:  # binascii.Error, or a non-ASCII string
        raise WireError(f"an image is not a base64-encoded PNG ({type(error).__name__})") from error
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            width, height = image.size  # from the IHDR chunk only
            if max_pixels is not None and width * height > max_pixels:
                raise OverLimit(
                    f"an image is {width}x{height} = {width * height} pixels, over the server's "
                    f"max_image_pixels={max_pixels}"
                )
            if size is not None and (width, height) != size:
                raise WireError(
                    f"all images of a request must have the same size ({width}x{height} after {size[0]}x{size[1]})"
                )
            return np.asarray(image.convert("RGB"))
    except WireError:
        raise
    except Image.DecompressionBombError as error:
        raise OverLimit(f"an image is too large to decode ({error})") from error
    except Exception as error:  # whatever PIL raises on hostile bytes is the client's error, not the server's
        raise WireError(f"an image is not a base64-encoded PNG ({type(error).__name__})") from error


def encode_request(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> dict:
    return {"images": [encode_image(image) for image in images], "prompts": list(prompts), "metadata": metadata}


def parse_body(raw: bytes | bytearray, limits: Limits = Limits()) -> object:
    """The JSON of a request body, or WireError. Slow on big bodies: call it off the event loop."""
    # Every JSON value past the first follows a comma or colon, or opens with a bracket: counting
    # those bytes (strings included, so an over-count) bounds how many Python objects parsing makes,
    # which for tiny values like `{}` cost 20x their bytes. Base64 has none of these characters.
    items = raw.count(b",") + raw.count(b":") + raw.count(b"[") + raw.count(b"{")
    if items > limits.max_json_items:
        raise OverLimit(
            f"the body holds about {items} JSON values, over the server's max_json_items={limits.max_json_items}"
        )
    try:
        return json.loads(raw)
    except RecursionError as error:
        raise WireError("the body is JSON nested too deeply") from error
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise WireError(f"the body is not JSON ({type(error).__name__})") from error


def decode_request(body: object, limits: Limits = Limits()) -> tuple[np.ndarray, list[str], list[dict]]:
    """(B, H, W, 3) uint8 images, prompts and metadata of a parsed /score request, or WireError.
    Cheap checks come first, so a bad request costs no decoding."""
    if not isinstance(body, dict):
        raise WireError("the body must be a JSON object with 'images' and 'prompts'")
    images, prompts, metadata = body.get("images"), body.get("prompts"), body.get("metadata")
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise WireError("'images' must be a non-empty list of base64 PNG strings")
    if len(images) > limits.max_images:
        raise OverLimit(f"{len(images)} images in one request, over the server's max_images={limits.max_images}")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireError("'prompts' must be a list of strings")
    if (longest := max((len(p) for p in prompts), default=0)) > limits.max_prompt_chars:
        raise OverLimit(
            f"a prompt of {longest} characters, over the server's max_prompt_chars={limits.max_prompt_chars}"
        )
    if metadata is None:
        metadata = [{} for _ in prompts]
    if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
        raise WireError("'metadata' must be a list of objects")
    if not len(images) == len(prompts) == len(metadata):
        raise WireError(
            f"{len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata: one each per image"
        )
    first = decode_image(images[0], limits.max_image_pixels)
    height, width = first.shape[:2]
    if len(images) * height * width > limits.max_request_pixels:
        raise OverLimit(
            f"{len(images)} images of {width}x{height} = {len(images) * height * width} pixels, over the server's "
            f"max_request_pixels={limits.max_request_pixels}: send fewer per request (reward.batch_size)"
        )
    decoded = np.empty((len(images), height, width, 3), dtype=np.uint8)
    decoded[0] = first
    for index in range(1, len(images)):
        decoded[index] = decode_image(images[index], limits.max_image_pixels, size=(width, height))
    return decoded, prompts, metadata

"""The reward server's wire format: JSON with images as base64 PNG (lossless, and nothing is
unpickled from the network).

POST /score  {"images": [<base64 PNG>, ...], "prompts": [str, ...], "metadata": [{...}, ...]}
         ->  200 {"scores": [float, ...]}
             400 {"error": "..."} for a malformed request, 500 {"error": "..."} if scoring failed
GET /health ->  200 {"status": "ok", "reward": "<name>"}
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError


class WireError(ValueError):
    """A request that does not follow the format above."""


def encode_image(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(text: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
            return np.asarray(image.convert("RGB"))
    except (binascii.Error, UnidentifiedImageError, ValueError, TypeError) as error:
        raise WireError(f"an image is not a base64-encoded PNG ({type(error).__name__})") from error


def encode_request(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> dict:
    return {"images": [encode_image(image) for image in images], "prompts": list(prompts), "metadata": metadata}


def decode_request(body) -> tuple[np.ndarray, list[str], list[dict]]:
    """(B, H, W, 3) uint8 images, prompts and metadata of a /score request, or WireError."""
    if not isinstance(body, dict):
        raise WireError("the body must be a JSON object with 'images' and 'prompts'")
    images, prompts = body.get("images"), body.get("prompts")
    metadata = body.get("metadata") or [{} for _ in prompts or []]
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise WireError("'images' must be a non-empty list of base64 PNG strings")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireError("'prompts' must be a list of strings")
    if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
        raise WireError("'metadata' must be a list of objects")
    if not len(images) == len(prompts) == len(metadata):
        raise WireError(
            f"{len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata: one each per image"
        )
    decoded = [decode_image(image) for image in images]
    if len({image.shape for image in decoded}) != 1:
        raise WireError("all images of a request must have the same size")
    return np.stack(decoded), prompts, metadata

"""Images made by tests (nothing is downloaded), and a loopback image server."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def image_bytes(width: int = 96, height: int = 72, fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def image_base64(**kwargs) -> str:
    return base64.b64encode(image_bytes(**kwargs)).decode()

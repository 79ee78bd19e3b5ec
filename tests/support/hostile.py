"""A hostile image corpus, generated here (nothing downloaded), and a loopback server for it.

Each case says what the client must get back: the status and the envelope's error type, or
200 for valid-but-odd images (CMYK, 16-bit, alpha, animated) that must simply work.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.support.images import LoopbackServer, image_bytes

BIG_BODY_BYTES = 21 * 1024 * 1024  # over the default fetch.max_bytes (20 MiB)
DRIP_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str
    status: int
    error_type: str | None = None


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(height: int, width: int, channels: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, channels), dtype=np.uint8)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def declared_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height RGB pixels: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (48, 40), color) for color in ("red", "green", "blue")]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def gray16_png() -> bytes:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")


def hostile_corpus() -> dict[str, Case]:
    jpeg = image_bytes(256, 192)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect/></svg>'
    html = b"<!doctype html><html><body>not an image</body></html>"
    return {
        "truncated_jpeg": Case(jpeg[: len(jpeg) // 2], "image/jpeg", 400, "invalid_image"),
        "one_pixel_png": Case(
            _save(Image.new("RGB", (1, 1)), "PNG"), "image/png", 400, "invalid_image"
        ),
        "empty": Case(b"", "image/jpeg", 400, "invalid_image"),
        "bomb_png": Case(declared_png(100_000, 100_000), "image/png", 413, "payload_too_large"),
        "over_limit_png": Case(declared_png(8_000, 8_000), "image/png", 413, "payload_too_large"),
        "html_as_jpeg": Case(html, "image/jpeg", 415, "unsupported_media_type"),
        "html": Case(html, "text/html", 415, "unsupported_media_type"),
        "svg": Case(svg, "image/svg+xml", 415, "unsupported_media_type"),
        "svg_as_png": Case(svg, "image/png", 415, "unsupported_media_type"),
        "animated_gif": Case(animated_gif(), "image/gif", 200),
        "cmyk_jpeg": Case(
            _save(Image.fromarray(_noise(64, 80, 4), "CMYK"), "JPEG"), "image/jpeg", 200
        ),
        "gray16_png": Case(gray16_png(), "image/png", 200),
        "rgba_png": Case(
            _save(Image.fromarray(_noise(64, 64, 4), "RGBA"), "PNG"), "image/png", 200
        ),
    }


# Served by path rather than from the corpus: too big to hold, or too slow to finish.
STREAMED_CASES = {
    "big": Case(b"", "image/jpeg", 413, "payload_too_large"),
    "drip": Case(b"", "image/jpeg", 504, "upstream_timeout"),
}


class HostileServer(LoopbackServer):
    """Loopback aiohttp server: /case/<name>, /big (21 MiB, chunked), /drip (a byte at a time),
    /redirect?to=<location> (302)."""

    def __init__(self) -> None:
        super().__init__()
        self.corpus = hostile_corpus()

    def url(self, name: str) -> str:
        path = name if name in STREAMED_CASES else f"case/{name}"
        return f"{self.base_url}/{path}"

    def build_app(self):
        from aiohttp import web

        async def case(request):
            found = self.corpus[request.match_info["name"]]
            return web.Response(body=found.body, headers={"Content-Type": found.content_type})

        async def big(request):
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            await response.prepare(request)
            chunk = b"\xff" * (1024 * 1024)
            for _ in range(BIG_BODY_BYTES // len(chunk)):
                await response.write(chunk)
            return response

        async def drip(request):
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            await response.prepare(request)
            for byte in image_bytes()[:600]:  # minutes of dripping; clients give up first
                await response.write(bytes([byte]))
                await asyncio.sleep(DRIP_INTERVAL_S)
            return response

        async def redirect(request):
            raise web.HTTPFound(request.query["to"])

        app = web.Application()
        app.router.add_get("/case/{name}", case)
        app.router.add_get("/big", big)
        app.router.add_get("/drip", drip)
        app.router.add_get("/redirect", redirect)
        return app


def all_cases(server: HostileServer) -> dict[str, Case]:
    return {**server.corpus, **STREAMED_CASES}

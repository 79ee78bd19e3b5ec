"""A hostile image corpus, generated here (nothing downloaded), and a loopback server for it.

Each case says what the client must get back: the status and the envelope's error type, or
200 for valid-but-odd images (CMYK, 16-bit, alpha, animated) that must simply work.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

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


# Under-limit giants: cheap to send, costly to decode (49 MP, 16-bit, alpha, a 1:223 strip).
# (width, height, PNG bit depth, PNG colour type: 0 gray, 2 RGB, 6 RGBA)
GIANTS = {
    "giant_49mp_png": (7000, 7000, 8, 2),
    "giant_strip_png": (448, 100_000, 8, 2),
    "giant_gray16_png": (7000, 7000, 16, 0),
    "giant_rgba_png": (7000, 7000, 8, 6),
}
_GIANT_DIR = Path(tempfile.gettempdir()) / "clipfleet-hostile-giants-v2"
_CHANNELS = {0: 1, 2: 3, 6: 4}


def giant_png(width: int, height: int, bit_depth: int, color_type: int) -> bytes:
    """A PNG written row by row (never the whole raster in memory): gradients whose rows repeat
    in bands of 64, so it compresses to a few hundred KB and inflates fast. Cached in tmp."""
    path = _GIANT_DIR / f"{width}x{height}-{bit_depth}-{color_type}.png"
    if path.exists():
        return path.read_bytes()
    samples, sample = _CHANNELS[color_type], f">u{bit_depth // 8}"
    x = np.arange(width, dtype=np.int64)[:, None]
    compressor = zlib.compressobj(6)
    chunks = []
    for y in range(height):
        if y % 64 == 0:  # a new level every 64 rows; the rows between repeat the one above
            level = (x * np.arange(1, samples + 1) * 3 + y // 64 * 37) % 256
            if color_type == 6:
                level[:, 3] = 64 + (y // 64 * 29) % 192  # alpha: 25-100 %, level along a row
            values = level * 257 if bit_depth == 16 else level
            row = b"\x00" + values.astype(sample).tobytes()  # filter 0: raw samples
        chunks.append(compressor.compress(row))
    chunks.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(chunks))
        + _png_chunk(b"IEND", b"")
    )
    _GIANT_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(path)  # atomic: parallel test processes never read half a file
    return data


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
        **{name: Case(giant_png(*spec), "image/png", 200) for name, spec in GIANTS.items()},
    }


# Served by path rather than from the corpus: too big to hold, or too slow to finish.
STREAMED_CASES = {
    "big": Case(b"", "image/jpeg", 413, "payload_too_large"),
    "drip": Case(b"", "image/jpeg", 504, "upstream_timeout"),
}


class HostileServer(LoopbackServer):
    """Loopback aiohttp server: /case/<name>, /big (21 MiB, chunked), /drip (a byte at a time),
    /redirect?to=<location> (302), /bomb/<name> (tests.support.bombs and the giants)."""

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

        async def bomb(request):
            from tests.support.decode_peaks import bomb_bytes

            data = bomb_bytes(request.match_info["name"])
            return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

        app = web.Application()
        app.router.add_get("/case/{name}", case)
        app.router.add_get("/big", big)
        app.router.add_get("/drip", drip)
        app.router.add_get("/redirect", redirect)
        app.router.add_get("/bomb/{name}", bomb)
        return app


def all_cases(server: HostileServer) -> dict[str, Case]:
    return {**server.corpus, **STREAMED_CASES}

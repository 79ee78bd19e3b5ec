"""What decoding an image costs in memory, and the asyncio semaphore counted in bytes that
bounds concurrent decodes by it.

Pillow's codecs allocate more than the raster they decode into, each in its own way; the
functions here read it from the opened header (clipfleet.images.decode.decode_cost adds its own band
conversion). Measured per format against the decoders' peak memory by
tests/unit/images/test_decode_cost.py (tests/support/bombs.py holds one file per case).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator

from PIL import Image, PngImagePlugin

# Pillow decompresses a PNG's text chunks when it opens it, up to 64 MB by default: capped here
# (a PNG with more text is refused as undecodable), and counted in every PNG's cost.
PNG_TEXT_BYTES = 4 * 1024 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = PNG_TEXT_BYTES


def pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel: bands x bytes per sample, multi-band padded to 4."""
    if mode.startswith("I;16"):
        return 2
    if mode in ("I", "F"):
        return 4
    return 1 if Image.getmodebands(mode) == 1 else 4


def codec_held_bytes(image: Image.Image) -> int:
    """What the codec keeps until the image is closed, beside the raster."""
    width, height = image.size
    if image.format == "WEBP":
        # Pillow reads every WebP through libwebp's animation decoder: its canvas and its
        # previous-frame canvas (RGBA), and the frame's bytes handed to Pillow.
        return 3 * width * height * 4
    if image.format == "GIF" and getattr(image, "disposal_method", 0) == 2:
        # A first frame disposed to the background: Pillow fills its extent for the next one.
        x0, y0, x1, y1 = getattr(image, "dispose_extent", (0, 0, width, height))
        return (x1 - x0) * (y1 - y0) * pixel_bytes(image.mode)
    if image.format == "PNG":
        return PNG_TEXT_BYTES
    return 0


def codec_scratch_bytes(image: Image.Image, full_size: tuple[int, int], data: bytes | None) -> int:
    """What the codec allocates while it decodes, freed when it is done."""
    codec = image.tile[0][0] if image.tile else ""
    if image.format in ("JPEG", "MPO") and (data is None or _jpeg_scans(data) > 1):
        return _jpeg_coefficient_bytes(image, full_size)
    if codec == "bmp_rle":  # Pillow's Python decoder: a bytearray of the raster, then bytes
        return 2 * image.size[0] * image.size[1] * pixel_bytes(image.mode)
    if codec == "libtiff":
        return _tiff_chunk_bytes(image)
    return 0


def _jpeg_coefficient_bytes(image: Image.Image, full_size: tuple[int, int]) -> int:
    """libjpeg's buffer for a multi-scan (progressive) JPEG: every component's DCT coefficients
    (64 x 2 bytes per 8 x 8 block) at full size, whatever the output scale."""
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * 4
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    total = 0
    for _, h, v, _ in layers:
        blocks_wide = math.ceil(math.ceil(full_size[0] * h / h_max) / 8)
        blocks_high = math.ceil(math.ceil(full_size[1] * v / v_max) / 8)
        total += _round_up(blocks_wide, h) * _round_up(blocks_high, v) * 64 * 2
    return total


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _jpeg_scans(data: bytes) -> int:
    """Scans (SOS markers) of the main image, from its first scan to its end (EOI): entropy-coded
    data never holds 0xFF 0xDA or 0xFF 0xD9. The markers before the first scan are walked by
    their lengths, so an EXIF thumbnail's own scan is not counted."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xDA:
            end = data.find(b"\xff\xd9", position)
            return data.count(b"\xff\xda", position, end if end >= 0 else len(data))
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:
            position += 1 if marker == 0xFF else 2  # fill byte, or a marker without a length
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return 2  # no scan found where expected: assume the worst


def _tiff_chunk_bytes(image: Image.Image) -> int:
    """libtiff's buffer for one strip or tile (a whole image can be a single strip), at least
    4 bytes per pixel (its RGBA interface for YCbCr / JPEG-in-TIFF)."""
    tags = image.tag_v2
    width, height = image.size
    if 322 in tags and 323 in tags:  # TileWidth, TileLength
        pixels = int(tags[322]) * int(tags[323])
    else:
        pixels = width * min(height, int(tags.get(278, height)))  # RowsPerStrip
    bits = tags.get(258, (8,))  # BitsPerSample
    per_pixel = math.ceil(sum(bits if isinstance(bits, tuple) else (bits,)) / 8)
    return pixels * max(4, per_pixel)


class ByteBudget:
    """Holders take `n` bytes of `capacity` and give them back; waiters are served first come,
    first served (a big request is not starved by a stream of small ones). A request for more
    than the capacity waits for the whole budget and then runs alone."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[int]:
        """Hold min(nbytes, capacity) bytes for the block; yields the amount held."""
        amount = await self.acquire(nbytes)
        try:
            yield amount
        finally:
            self.release(amount)

    async def acquire(self, nbytes: int) -> int:
        """Wait for min(nbytes, capacity) bytes and take them; returns the amount to release."""
        amount = max(0, min(nbytes, self.capacity))
        if not self._waiters and self.in_use + amount <= self.capacity:
            self.in_use += amount
            return amount
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((amount, waiter))
        try:
            await waiter  # _wake() has added `amount` to in_use before resolving it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_use -= amount  # granted just as it was cancelled: give it back
            else:
                with contextlib.suppress(ValueError):  # _wake() may have dropped it already
                    self._waiters.remove((amount, waiter))
            self._wake()
            raise
        return amount

    def release(self, amount: int) -> None:
        """Give back what `acquire` returned (call it on the event loop's thread)."""
        self.in_use -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            amount, waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += amount
                waiter.set_result(None)

"""Decode bombs: small files, under every limit, that cost the decoder hundreds of MB.

One per way Pillow's decoders allocate more than the output raster (issue 23): progressive
JPEGs (libjpeg buffers every DCT coefficient of the full-size image), CMYK / YCCK JPEGs,
WebPs (libwebp's animation decoder keeps two canvases and hands Pillow a copy of a third),
GIFs whose first frame is disposed to the background (a second canvas), BMP RLE (Pillow's
Python decoder builds the raster twice more), TIFFs stored in one strip (libtiff's strip
buffer), APNGs, and PNGs of every bit depth. Generated here, never downloaded, and cached in
the temporary folder: the JPEG and WebP encoders need the whole raster once.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image, TiffImagePlugin

SIDE = 7000  # 49 MP: under the default fetch.max_pixels (50 MP)
CACHE_DIR = Path(tempfile.gettempdir()) / "clipfleet-decode-bombs-v1"


def cached_bytes(folder: Path, name: str, build: Callable[[], bytes]) -> bytes:
    """`build()`'s bytes, kept in `folder/name` (written atomically: parallel test processes
    never read half a file)."""
    path = folder / name
    if path.exists():
        return path.read_bytes()
    data = build()
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(path)
    return data


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg(mode: str, color, **options) -> Callable[[], bytes]:
    return lambda: _save(Image.new(mode, (SIDE, SIDE), color), "JPEG", quality=50, **options)


def _ycck(cmyk: Callable[[], bytes]) -> Callable[[], bytes]:
    """A CMYK JPEG whose Adobe marker says YCCK (transform 2): libjpeg converts it to CMYK."""

    def build() -> bytes:
        data = bytearray(cmyk())
        adobe = data.index(b"Adobe")
        data[adobe + 11] = 2
        return bytes(data)

    return build


def _riff_chunk(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def _u24(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


def animated_webp(width: int = SIDE, height: int = SIDE, frames: int = 2) -> bytes:
    """~160 bytes: a VP8X canvas of width x height and 1x1 lossless frames (the issue's 136-byte
    bomb)."""
    tiny = _save(Image.new("RGBA", (1, 1), (1, 2, 3, 4)), "WEBP", lossless=True)
    vp8l = tiny[tiny.index(b"VP8L") + 8 :]
    body = b"WEBP" + _riff_chunk(
        b"VP8X", bytes([0x12]) + b"\0\0\0" + _u24(width - 1) + _u24(height - 1)
    )
    body += _riff_chunk(b"ANIM", b"\0" * 6)
    frame = _u24(0) * 4 + _u24(100) + b"\0" + _riff_chunk(b"VP8L", vp8l)
    body += _riff_chunk(b"ANMF", frame) * frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _gif_disposed() -> bytes:
    """Full-canvas frames disposed to the background: Pillow fills a second canvas for it."""
    frames = [Image.new("P", (SIDE, SIDE), index) for index in (1, 2)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], disposal=2)


def _apng() -> bytes:
    frames = [Image.new("RGBA", (SIDE, SIDE), color) for color in ((1, 2, 3, 90), (9, 8, 7, 200))]
    return _save(frames[0], "PNG", save_all=True, append_images=frames[1:], disposal=1, blend=1)


def bmp_rle(width: int = SIDE, height: int = SIDE, rle4: bool = False) -> bytes:
    """A run-length encoded BMP (RLE8, or RLE4: two pixels per byte), runs of 255 pixels."""
    colors = 16 if rle4 else 256
    palette = b"".join(bytes((i, i, i, 0)) for i in range(colors))
    row = bytearray()
    for start in range(0, width, 255):
        row += bytes((min(255, width - start), 0x12 if rle4 else 7))
    pixels = (bytes(row) + b"\0\0") * height + b"\0\1"
    bits, compression = (4, 2) if rle4 else (8, 1)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 2835, 2835, colors, 0
    )
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + palette + pixels


def _tiff_one_strip() -> bytes:
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[278] = SIDE  # RowsPerStrip: the whole image in one LZW strip
    image = Image.new("RGB", (SIDE, SIDE), (1, 2, 3))
    return _save(image, "TIFF", compression="tiff_lzw", tiffinfo=tags)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def png_text_bomb(chunks: int = 63) -> bytes:
    """A 64 x 64 PNG with `chunks` zTXt chunks of 1 MB each (Pillow decompresses them when it
    opens the file, up to its 64 MB text limit): ~70 KB that cost 64 MB before any pixel."""
    small = _save(Image.new("RGB", (64, 64)), "PNG")
    text = zlib.compress(b"a" * (1024 * 1024 - 64), 9)
    ztxt = b"".join(_png_chunk(b"zTXt", b"k%d\0\0" % i + text) for i in range(chunks))
    return small[:33] + ztxt + small[33:]  # after the signature and IHDR


# name -> (builder, what it stresses); every one is under fetch.max_pixels and max_bytes.
BUILDERS: dict[str, Callable[[], bytes]] = {
    "jpeg_baseline": _jpeg("RGB", (120, 30, 200)),
    "jpeg_progressive": _jpeg("RGB", (120, 30, 200), progressive=True, subsampling=0),
    "jpeg_progressive_420": _jpeg("RGB", (120, 30, 200), progressive=True),
    "jpeg_progressive_gray": _jpeg("L", 90, progressive=True),
    "jpeg_cmyk": _jpeg("CMYK", (10, 200, 30, 40)),
    "jpeg_cmyk_progressive": _jpeg("CMYK", (10, 200, 30, 40), progressive=True),
    "jpeg_ycck_progressive": _ycck(_jpeg("CMYK", (10, 200, 30, 40), progressive=True)),
    "webp_animated": animated_webp,
    "webp_lossless": lambda: _save(
        Image.new("RGB", (SIDE, SIDE), (4, 5, 6)), "WEBP", lossless=True
    ),
    "gif_disposed": _gif_disposed,
    "apng": _apng,
    "bmp_rle8": bmp_rle,
    "bmp_rle4": lambda: bmp_rle(rle4=True),
    "tiff_one_strip": _tiff_one_strip,
}


# The mix sent 24 at a time (tests/integration/test_decode_memory.py, loadtests/hostile.py):
# one of each way to allocate beyond the raster, and a 49 MP RGBA PNG.
MIXED = (
    *("jpeg_progressive", "jpeg_cmyk_progressive", "jpeg_ycck_progressive", "webp_animated"),
    *("gif_disposed", "bmp_rle8", "tiff_one_strip", "giant_rgba_png"),
)


def decode_bomb(name: str) -> bytes:
    return cached_bytes(CACHE_DIR, name, BUILDERS[name])

"""Decode untrusted image bytes into a small RGB uint8 array that is cheap to ship."""

from __future__ import annotations

import logging
import struct
import warnings
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipfleet.config import FetchLimits
from clipfleet.errors import InvalidImageError, PayloadTooLargeError, UnsupportedMediaTypeError

logger = logging.getLogger("ray.serve")

DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
# Decoders Image.open may try (MPO files open through the JPEG plugin).
_OPEN_FORMATS = sorted(DECODABLE_FORMATS - {"MPO"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def decode_image(data: bytes, limits: FetchLimits) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB, EXIF orientation applied, shorter side <= ship_shortest_side.

    Only the formats above are tried (never EPS, PDF & co.), the declared size is checked
    against `max_pixels` / `min_side` before any pixel is decoded, and animated images give
    their first frame. Every decoder failure is the client's bad image (400), never a 500.
    """
    if not data:
        raise InvalidImageError("the image is empty")
    try:
        with warnings.catch_warnings():
            # _check_header enforces our own max_pixels before decoding; Pillow still refuses
            # (DecompressionBombError) anything over twice its MAX_IMAGE_PIXELS at open.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=_OPEN_FORMATS) as image:
                _check_header(image, limits)
                return _to_shippable_rgb(image, limits.ship_shortest_side)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(
            f"the image has too many pixels (limit {limits.max_pixels})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaTypeError(
            "the data is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc
    except (ArithmeticError, IndexError, KeyError, TypeError, struct.error) as exc:
        # Malformed metadata (EXIF, palettes) can trip other errors inside Pillow.
        logger.warning("image decoder failed: %r", exc)
        raise InvalidImageError("the image could not be decoded: malformed image data") from exc


def _check_header(image: Image.Image, limits: FetchLimits) -> None:
    if image.format not in DECODABLE_FORMATS:
        raise UnsupportedMediaTypeError(f"image format {image.format} is not supported")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise PayloadTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImageError(
            f"the image is {width}x{height}; both sides must be at least {limits.min_side} pixels"
        )


def _to_shippable_rgb(image: Image.Image, shortest_side: int) -> np.ndarray:
    width, height = image.size
    if image.format == "JPEG" and min(width, height) > shortest_side:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far less work for large photos.
        scale = shortest_side / min(width, height)
        image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
    image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    width, height = image.size
    if min(width, height) > shortest_side:
        scale = shortest_side / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_MODES:
        image = _to_8bit_gray(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return _flatten_alpha(image) if has_alpha else image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int / float) grayscale scaled to 8 bits, not clipped to white."""
    values = np.asarray(image, dtype=np.float64)
    scale = 1.0 if image.mode == "F" else 255.0 / 65535.0
    return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, as viewers show them, rather than arbitrary colours."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")

"""Decode untrusted image bytes into a small RGB uint8 array that is cheap to ship."""

from __future__ import annotations

import warnings
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipfleet.config import FetchLimits
from clipfleet.errors import InvalidImageError, PayloadTooLargeError, UnsupportedMediaTypeError

DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})


def decode_image(data: bytes, limits: FetchLimits) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB, EXIF orientation applied, shorter side <= ship_shortest_side."""
    if not data:
        raise InvalidImageError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as image:
                _check_header(image, limits)
                return _to_shippable_rgb(image, limits.ship_shortest_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(
            f"the image has too many pixels (limit {limits.max_pixels})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaTypeError(
            "the data is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc


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
    image = _flatten_alpha(image) if image.mode in ("RGBA", "LA", "PA") else image.convert("RGB")
    width, height = image.size
    if min(width, height) > shortest_side:
        scale = shortest_side / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, as viewers show them, rather than arbitrary colours."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")

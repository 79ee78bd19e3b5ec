"""Decode untrusted image bytes into a small RGB uint8 array that is cheap to ship.

Memory: our only full-size buffer is the raster the codec decodes into (JPEGs decode at 1/2,
1/4 or 1/8 scale when that suffices). Mode conversions (16-bit -> 8-bit, alpha onto white,
CMYK / palette -> RGB) and Pillow's integer reduce run on horizontal bands of it, so a 49 MP
image costs its raster plus a few MB, not the ~1 GB of whole-image copies. EXIF orientation is
applied to the small result. What the codecs themselves allocate beside the raster (a
progressive JPEG's coefficients, libwebp's canvases...) is clipfleet.images.budget's. `decode_cost`
adds both up from the header, before any pixel is decoded (`DecodePlan.cost_bytes`);
`clipfleet.images.fetch` bounds concurrent decodes by it.

Shape: the shorter side is scaled to at most `ship_shortest_side`, and the longer side is capped
at `ship_longest_side` without changing what the encoders see: `crop` keeps the centre (every
encoder here resizes the shorter side and centre-crops a square, which lies inside it),
`squash` scales the long axis alone (for a model that resizes both axes to a square).
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import warnings
from collections.abc import Iterator
from io import BytesIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipfleet.config import FetchLimits
from clipfleet.errors import InvalidImageError, PayloadTooLargeError, UnsupportedMediaTypeError
from clipfleet.images.budget import codec_held_bytes, codec_scratch_bytes, pixel_bytes

logger = logging.getLogger("ray.serve")

DECODABLE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
# Decoders Image.open may try (MPO files open through the JPEG plugin).
UNDECODABLE = (
    "the image could not be decoded: send a complete, uncorrupted JPEG, PNG, WebP, GIF, BMP "
    "or TIFF file"
)
_OPEN_FORMATS = sorted(DECODABLE_FORMATS - {"MPO"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_RESAMPLE = Image.Resampling.BICUBIC
# Pillow's own resize(reducing_gap=3.0) path, replayed band by band: integer reduce() first,
# then bicubic (filter support 2.0) over the reduced image.
_REDUCING_GAP = 3.0
_BICUBIC_SUPPORT = 2.0
_BAND_BYTES = 4 * 1024 * 1024  # native pixels converted per band (a band makes ~5 copies)
# Bytes per pixel a band takes while it becomes RGB, beyond its native pixels: RGB (4); with
# alpha RGBA, a white background, their composite and RGB (16); 16-bit / float grayscale its
# float64 values, their scaled and clipped copies (24), then L and RGB.
_CONVERT_BYTES = {"plain": 4, "alpha": 16, "wide": 30}
_SHIP_COPIES = 3  # the resized image, its EXIF transpose and the shipped array (RGB, 4 B/px)
_ORIENTATION = 0x0112
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Box = tuple[float, float, float, float]


def decode_image(data: bytes, limits: FetchLimits) -> np.ndarray:
    """Bytes -> HxWx3 uint8 RGB, EXIF orientation applied, sides within the ship_* limits.

    Only the formats above are tried (never EPS, PDF & co.), the declared size is checked
    against `max_pixels` / `min_side` before any pixel is decoded, and animated images give
    their first frame. Every decoder failure is the client's bad image (400), never a 500.
    """
    plan = open_image(data, limits)
    try:
        return plan.decode()
    finally:
        plan.close()


def open_image(data: bytes, limits: FetchLimits) -> DecodePlan:
    """Read the header only: checked, and what decoding it will cost."""
    if not data:
        raise InvalidImageError("the image is empty")
    return DecodePlan(data, limits)


@contextlib.contextmanager
def _opened(data: bytes, limits: FetchLimits) -> Iterator[tuple[Image.Image, tuple[int, int]]]:
    """The image opened (only the formats above), a JPEG's draft scale chosen; its full size."""
    image = Image.open(BytesIO(data), formats=_OPEN_FORMATS)
    try:
        width, height = image.size
        shortest = limits.ship_shortest_side
        if image.format == "JPEG" and min(width, height) > shortest:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far less work for large photos.
            scale = shortest / min(width, height)
            image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
        yield image, (width, height)
    finally:
        image.close()


@contextlib.contextmanager
def decoder_errors(limits: FetchLimits) -> Iterator[None]:
    """Pillow's failures as the client's errors (400, 413, 415)."""
    try:
        with warnings.catch_warnings():
            # _check_header enforces our own max_pixels before decoding; Pillow still refuses
            # (DecompressionBombError) anything over twice its MAX_IMAGE_PIXELS at open.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(
            f"the image has too many pixels (limit {limits.max_pixels})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaTypeError(
            "the data is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow's own text stays in the log: it names internals, not what the client can fix.
        logger.debug("image decoder refused the image: %r", exc)
        raise InvalidImageError(UNDECODABLE) from exc
    except (ArithmeticError, IndexError, KeyError, TypeError, struct.error) as exc:
        # Malformed metadata (EXIF, palettes) can trip other errors inside Pillow.
        logger.warning("image decoder failed: %r", exc)
        raise InvalidImageError(UNDECODABLE) from exc


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


class DecodePlan:
    """A checked header: format, size, mode and what decoding will cost (`cost_bytes`).

    Nothing of the image stays open while the caller waits for its budget (a GIF disposed to
    the background already holds a second canvas, a PNG its text): `decode()` opens it again.
    """

    def __init__(self, data: bytes, limits: FetchLimits) -> None:
        self.data = data
        self.limits = limits
        with decoder_errors(limits), _opened(data, limits) as (image, full_size):
            _check_header(image, limits)
            self.format, self.size, self.mode = image.format, image.size, image.mode
            self.cost_bytes = decode_cost(image, full_size, limits, data)

    def close(self) -> None:
        """Nothing is held between the header and the decode; kept for the callers' symmetry."""

    def decode(self) -> np.ndarray:
        with decoder_errors(self.limits), _opened(self.data, self.limits) as (image, _):
            image.load()
            size, box = ship_geometry(image.size, self.limits)
            small = _resize_in_bands(image, size, box)
            method = _TRANSPOSES.get(image.getexif().get(_ORIENTATION))
            if method is not None:
                small = small.transpose(method)
            return np.asarray(small, dtype=np.uint8).copy()


def ship_geometry(size: tuple[int, int], limits: FetchLimits) -> tuple[tuple[int, int], Box]:
    """(output size, source box): shorter side <= ship_shortest_side, longer side <=
    ship_longest_side by a centre crop (`crop`) or by scaling the long axis alone (`squash`)."""
    width, height = size
    scale = min(1.0, limits.ship_shortest_side / min(width, height))
    out = [max(1, round(width * scale)), max(1, round(height * scale))]
    box = [0.0, 0.0, float(width), float(height)]
    long_axis = 0 if width >= height else 1
    if out[long_axis] > limits.ship_longest_side:
        out[long_axis] = limits.ship_longest_side
        if limits.ship_long_side_fit == "crop":
            kept = limits.ship_longest_side / scale
            margin = (size[long_axis] - kept) / 2
            box[long_axis], box[long_axis + 2] = margin, size[long_axis] - margin
    return (out[0], out[1]), (box[0], box[1], box[2], box[3])


def _resize_in_bands(image: Image.Image, size: tuple[int, int], box: Box) -> Image.Image:
    """`_to_rgb(image).resize(size, BICUBIC, box, reducing_gap=3.0)`, the conversion and the
    integer reduce done band by band so that no full-size copy of the image is made. An RGB
    image needs no conversion: Pillow's own reduce-and-resize makes no full-size copy either,
    and skips the bands' copies (a third of a photo's resize time)."""
    if image.mode == "RGB" and _conversion(image) == "plain":
        return image.resize(size, _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)
    factor_x, factor_y = _reduce_factors(size, box)
    region = _safe_box(image.size, size, box)
    reduced = _converted_region(image, region, factor_x, factor_y)
    box = (
        (box[0] - region[0]) / factor_x,
        (box[1] - region[1]) / factor_y,
        (box[2] - region[0]) / factor_x,
        (box[3] - region[1]) / factor_y,
    )
    return reduced.resize(size, _RESAMPLE, box=box)


def _reduce_factors(size: tuple[int, int], box: Box) -> tuple[int, int]:
    """Pillow's integer reduce before the bicubic resize (reducing_gap 3)."""
    factor_x = int((box[2] - box[0]) / size[0] / _REDUCING_GAP) or 1
    factor_y = int((box[3] - box[1]) / size[1] / _REDUCING_GAP) or 1
    return factor_x, factor_y


def _band_rows(width: int, mode: str, factor_y: int) -> int:
    """Rows converted per band: about _BAND_BYTES of native pixels, a multiple of factor_y."""
    return max(1, _BAND_BYTES // max(1, width * pixel_bytes(mode)) // factor_y) * factor_y


def _safe_box(image_size: tuple[int, int], size: tuple[int, int], box: Box):
    """The source pixels the resize reads: `box` widened by the filter's support (as Pillow)."""
    support_x = (_BICUBIC_SUPPORT - 0.5) * (box[2] - box[0]) / size[0]
    support_y = (_BICUBIC_SUPPORT - 0.5) * (box[3] - box[1]) / size[1]
    return (
        max(0, int(box[0] - support_x)),
        max(0, int(box[1] - support_y)),
        min(image_size[0], math.ceil(box[2] + support_x)),
        min(image_size[1], math.ceil(box[3] + support_y)),
    )


def _converted_region(
    image: Image.Image, region: tuple[int, int, int, int], factor_x: int, factor_y: int
) -> Image.Image:
    """`region` of `image` as RGB, reduced by (factor_x, factor_y), converted band by band."""
    left, top, right, bottom = region
    width = right - left
    out = Image.new("RGB", (math.ceil(width / factor_x), math.ceil((bottom - top) / factor_y)))
    rows = _band_rows(width, image.mode, factor_y)
    for band_top in range(top, bottom, rows):
        band = image.crop((left, band_top, right, min(bottom, band_top + rows)))
        rgb = _to_rgb(band)
        if factor_x > 1 or factor_y > 1:
            rgb = rgb.reduce((factor_x, factor_y))
        out.paste(rgb, (0, (band_top - top) // factor_y))
    return out


def _conversion(image: Image.Image) -> str:
    """How `_to_rgb` converts this image: wide grayscale, alpha onto white, or plain."""
    if image.mode in _WIDE_MODES:
        return "wide"
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return "alpha" if has_alpha else "plain"


def _to_rgb(image: Image.Image) -> Image.Image:
    conversion = _conversion(image)
    if conversion == "wide":
        image = _to_8bit_gray(image)
    return _flatten_alpha(image) if conversion == "alpha" else image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int / float) grayscale scaled to 8 bits, not clipped to white."""
    values = np.asarray(image).astype(np.float64)  # one band at a time
    scale = 1.0 if image.mode == "F" else 255.0 / 65535.0
    return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, as viewers show them, rather than arbitrary colours."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


# --- what a decode costs ----------------------------------------------------------------------
# Measured per format against the decoders' peak memory by tests/unit/images/test_decode_cost.py.


def decode_cost(
    image: Image.Image, full_size: tuple[int, int], limits: FetchLimits, data: bytes | None = None
) -> int:
    """Bytes a decode of the opened `image` (JPEG draft already chosen) holds at its peak, from
    its header: the raster the codec decodes into, what the codec keeps beside it until the
    image is closed, and the larger of the codec's scratch while it decodes and the band
    conversion after it. `full_size`: the size before draft; `data`: the file (None: unknown)."""
    raster = image.size[0] * image.size[1] * pixel_bytes(image.mode)
    scratch = max(codec_scratch_bytes(image, full_size, data), working_bytes(image, limits))
    return raster + codec_held_bytes(image) + scratch


def working_bytes(image: Image.Image, limits: FetchLimits) -> int:
    """`_resize_in_bands`' peak beside the raster: one band and its conversions, the reduced
    region it is pasted into, and the small result's copies."""
    size = image.size
    out, box = ship_geometry(size, limits)
    factor_x, factor_y = _reduce_factors(out, box)
    left, top, right, bottom = _safe_box(size, out, box)
    width, height = right - left, bottom - top
    band_pixels = width * min(height, _band_rows(width, image.mode, factor_y))
    band = band_pixels * (pixel_bytes(image.mode) + _CONVERT_BYTES[_conversion(image)])
    reduced = math.ceil(width / factor_x) * math.ceil(height / factor_y) * 4
    return band + reduced + out[0] * out[1] * 4 * _SHIP_COPIES

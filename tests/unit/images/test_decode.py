"""Decoding untrusted image bytes: the shipped size, EXIF, alpha, and each bad input's status."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipfleet.config import FetchLimits
from clipfleet.errors import find_clipfleet_error
from clipfleet.images.decode import decode_image
from tests.support.images import image_bytes


def test_decode_downscales_large_images_and_keeps_small_ones():
    limits = FetchLimits(ship_shortest_side=128)
    small = decode_image(image_bytes(100, 80), limits)
    assert small.shape == (80, 100, 3) and small.dtype == np.uint8
    large = decode_image(image_bytes(1200, 600), limits)
    assert min(large.shape[:2]) == 128 and large.shape[1] == 256


def test_decode_applies_exif_orientation_and_flattens_alpha():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    Image.new("RGB", (40, 20), (255, 0, 0)).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), FetchLimits()).shape == (40, 20, 3)
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), FetchLimits()).min() == 255


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"<html>not an image</html>", 415),
        (image_bytes()[:200], 400),
        (image_bytes(4, 4, fmt="PNG"), 400),
    ],
)
def test_decode_rejects_bad_input(data, status):
    with pytest.raises(Exception) as caught:
        decode_image(data, FetchLimits())
    assert find_clipfleet_error(caught.value).status == status


def test_decode_rejects_too_many_pixels():
    with pytest.raises(Exception) as caught:
        decode_image(image_bytes(300, 300, fmt="PNG"), FetchLimits(max_pixels=10_000))
    assert find_clipfleet_error(caught.value).status == 413

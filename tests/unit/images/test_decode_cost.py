"""The decode budget matches the decoders: for each way a format allocates beyond its raster
(tests/support/bombs.py: progressive and CMYK / YCCK JPEGs, WebP, GIF, APNG, BMP RLE, TIFF, and
the 49 MP PNG giants), the estimate the fetcher reserves (DecodePlan.cost_bytes) against the
decode's measured peak memory (tests/support/decode_peaks.py, in a child process)."""

from __future__ import annotations

import pytest

from clipfleet.config import FetchLimits
from clipfleet.errors import InvalidImageError
from clipfleet.images.budget import _jpeg_scans, pixel_bytes
from clipfleet.images.decode import open_image
from tests.support.bombs import BUILDERS, decode_bomb, png_text_bomb
from tests.support.decode_peaks import held_bytes, measure
from tests.support.hostile import GIANTS
from tests.support.images import image_bytes

CASES = sorted([*BUILDERS, *GIANTS])
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def peaks() -> dict[str, dict]:
    return measure(CASES)


@pytest.mark.parametrize("name", CASES)
def test_the_estimate_covers_the_decoders_peak(peaks, name):
    cost, peak = peaks[name]["cost"], peaks[name]["peak"]
    assert peak <= 1.2 * cost, f"{name}: estimated {cost / MiB:.0f} MiB, peaked {peak / MiB:.0f}"
    # and is no gross over-estimate, which would leave the budget idle
    assert cost <= 1.5 * peak + 16 * MiB, f"{name}: {cost / MiB:.0f} MiB for {peak / MiB:.0f}"


def test_the_bombs_are_what_they_claim():
    """Small files under every limit, each estimated far above its output raster."""
    limits = FetchLimits()
    for name in BUILDERS:
        data = decode_bomb(name)
        plan = open_image(data, limits)
        assert len(data) < limits.max_bytes and plan.size[0] * plan.size[1] <= limits.max_pixels
        if name not in ("jpeg_baseline", "jpeg_cmyk"):  # the controls: decoded at 1/8 scale
            assert plan.cost_bytes > 90 * MiB, name


def test_pixel_bytes_are_pillows():
    modes = ("L", "P", "1", "I;16", "I", "F", "RGB", "RGBA", "LA", "CMYK")
    assert [pixel_bytes(mode) for mode in modes] == [1, 1, 1, 2, 4, 4, 4, 4, 4, 4]


def test_only_the_main_images_scans_count():
    """A baseline JPEG has one scan, also with an EXIF thumbnail (a JPEG with its own scan)
    before it; a progressive one has several."""
    baseline = image_bytes(64, 48)
    thumbnail = image_bytes(16, 12)
    app1 = b"Exif\0\0" + thumbnail
    with_thumbnail = (
        baseline[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + baseline[2:]
    )
    assert _jpeg_scans(baseline) == 1 and _jpeg_scans(with_thumbnail) == 1
    assert _jpeg_scans(decode_bomb("jpeg_progressive")) > 1


def test_a_png_full_of_text_is_refused_before_its_pixels():
    """Pillow decompresses text chunks when it opens a PNG (64 MB by default): capped."""
    with pytest.raises(InvalidImageError):
        open_image(png_text_bomb(), FetchLimits())


def test_plans_waiting_for_the_budget_hold_no_pixels():
    """A header is read, then the plan waits for its budget: Pillow's open image must not wait
    with it (a GIF disposed to the background already holds a second 49 MP canvas)."""
    assert held_bytes("gif_disposed", 4) < 24 * MiB

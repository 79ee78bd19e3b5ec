"""The hostile images against the decoder and the fetcher: every input gets its own error (or
pixels, for odd-but-valid images). Their replay through the app, with every other hostile
request, is tests/unit/api/test_hostile_corpus.py's."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipfleet.api.app import create_app
from clipfleet.config import FetchLimits
from clipfleet.errors import ClipfleetError
from clipfleet.images.decode import UNDECODABLE, decode_image
from clipfleet.images.fetch import ImageSource, UrlFetcher
from tests.support.hostile import (
    GIANTS,
    HostileServer,
    all_cases,
    declared_png,
    gray16_png,
)
from tests.support.images import image_bytes
from tests.support.local_dag import build_local_service, loopback_fetch, tiny_app_args

LIMITS = loopback_fetch(timeout_s=1.5)
CASE_NAMES = sorted(all_cases(HostileServer()))


@pytest.fixture(scope="module")
def client(model_dir):
    service = build_local_service(tiny_app_args(model_dir, fetch=LIMITS))
    with TestClient(create_app(service)) as test_client:
        yield test_client


@pytest.mark.parametrize("name", CASE_NAMES)
async def test_fetcher_answers_each_case(hostile, name):
    case = all_cases(hostile)[name]
    fetcher = UrlFetcher(LIMITS)
    try:
        started = asyncio.get_running_loop().time()
        if name in GIANTS:  # the download is bounded in time; decoding 49 MP takes CPU time
            data = await fetcher.read_bytes(ImageSource(url=hostile.url(name)))
            assert asyncio.get_running_loop().time() - started < LIMITS.timeout_s + 1.0
            pixels = await fetcher.decode(data)
            assert min(pixels.shape[:2]) == LIMITS.ship_shortest_side
            assert max(pixels.shape[:2]) <= LIMITS.ship_longest_side
            return
        if case.status == 200:
            pixels = await fetcher.load(ImageSource(url=hostile.url(name)))
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        else:
            with pytest.raises(ClipfleetError) as caught:
                await fetcher.load(ImageSource(url=hostile.url(name)))
            assert (caught.value.status, caught.value.type) == (case.status, case.error_type)
        assert asyncio.get_running_loop().time() - started < LIMITS.timeout_s + 1.0
    finally:
        await fetcher.close()


def test_sixteen_bit_gray_is_scaled_not_clipped():
    pixels = decode_image(gray16_png(), FetchLimits())
    assert pixels.shape == (64, 64, 3) and 0 < pixels.mean() < 200 and pixels.max() > 200


def test_pixel_limit_is_ours_not_pillows():
    with pytest.raises(ClipfleetError) as caught:
        decode_image(declared_png(300, 300), FetchLimits(max_pixels=10_000))
    assert caught.value.status == 413


def corrupt_images() -> dict[str, bytes]:
    """Images Pillow opens but cannot decode, each with its own error text."""
    jpeg, png = image_bytes(fmt="JPEG"), image_bytes(fmt="PNG")
    idat = png.index(b"IDAT") + 8
    return {
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "scrambled_png": png[:idat]
        + bytes(255 - b for b in png[idat : idat + 64])
        + png[idat + 64 :],
    }


def pillow_text(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:
        return str(exc)
    raise AssertionError("Pillow decoded the corrupt image")


@pytest.mark.parametrize("name", sorted(corrupt_images()))
def test_pillows_error_text_never_reaches_the_client(client, name):
    data = corrupt_images()[name]
    library_text = pillow_text(data)
    answers = [
        client.post(
            "/v1/embed/image", json={"images": [{"base64": base64.b64encode(data).decode()}]}
        ),
        client.post("/v1/embed/image/upload", files={"image": ("x", data, "image/png")}),
    ]
    for response in answers:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_image" and error["message"] == UNDECODABLE
        assert library_text not in response.text and "PIL" not in response.text

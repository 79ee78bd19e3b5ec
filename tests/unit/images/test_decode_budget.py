"""Decode memory: the byte budget, band-wise decoding equal to Pillow's whole-image path, the
long-side cap invisible to the encoders' own preprocessing, and the giants' peak memory."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from clipfleet.config import ClipModelSpec, FetchLimits, ResNetSpec
from clipfleet.images import decode as imaging
from clipfleet.images.budget import ByteBudget
from clipfleet.images.decode import decode_image, open_image
from clipfleet.images.decode_pool import BULK_NICENESS, BudgetedDecoder
from clipfleet.images.fetch import UrlFetcher
from clipfleet.ingress import priority
from clipfleet.ingress.priority import BULK, INTERACTIVE
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.resnet import ResNetModel
from tests.support.hostile import GIANTS, giant_png
from tests.support.images import image_bytes

ROOT = Path(__file__).resolve().parents[3]
UNCAPPED = FetchLimits(ship_longest_side=65535)


async def test_budget_bounds_bytes_in_use_and_serves_in_order():
    budget = ByteBudget(100)
    order, peak = [], 0

    async def job(name: str, size: int) -> None:
        nonlocal peak
        async with budget.hold(size):
            peak = max(peak, budget.in_use)
            order.append(name)
            await asyncio.sleep(0.01)

    await asyncio.gather(job("a", 60), job("b", 60), job("c", 10), job("huge", 500), job("d", 10))
    assert peak <= 100 and budget.in_use == 0
    assert order == ["a", "b", "c", "huge", "d"]  # first come, first served; huge runs alone


async def test_budget_waiter_cancelled_gives_nothing_back_twice():
    budget = ByteBudget(100)
    async with budget.hold(80):
        waiting = asyncio.create_task(_hold(budget, 50))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert budget.in_use == 0
    async with budget.hold(100):
        assert budget.in_use == 100


async def _hold(budget: ByteBudget, size: int) -> None:
    async with budget.hold(size):
        await asyncio.sleep(1)


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


SAMPLES = {
    "rgb": lambda: _png(Image.fromarray(_noise((520, 700, 3)))),
    "rgba": lambda: _png(Image.fromarray(_noise((500, 420, 4)), "RGBA")),
    "gray16": lambda: _png(
        Image.fromarray(np.random.default_rng(1).integers(0, 65535, (450, 400)).astype("u2"))
    ),
    "palette_transparency": lambda: _png(
        Image.fromarray(_noise((400, 460, 3))).convert("P"), transparency=3
    ),
    "strip": lambda: _png(Image.fromarray(_noise((1600, 240, 3)))),
}
# Small ship sizes so that small samples take every path: integer reduce, crop, squash.
SMALL = {"ship_shortest_side": 64, "ship_longest_side": 128}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_band_decoding_equals_pillows_whole_image_path(name, monkeypatch):
    """Bit for bit what converting the whole image and resizing it (reducing_gap 3) gives."""
    monkeypatch.setattr(imaging, "_BAND_BYTES", 20_000)  # dozens of bands
    data = SAMPLES[name]()
    for limits in (
        FetchLimits(**SMALL),
        FetchLimits(**SMALL, ship_long_side_fit="squash"),
        FetchLimits(ship_shortest_side=64, ship_longest_side=65535),
        FetchLimits(),
    ):
        with Image.open(io.BytesIO(data)) as image:
            size, box = imaging.ship_geometry(image.size, limits)
            expected = imaging._to_rgb(image).resize(
                size, Image.Resampling.BICUBIC, box=box, reducing_gap=3.0
            )
        assert np.array_equal(decode_image(data, limits), np.asarray(expected))


def test_long_side_is_capped():
    limits = FetchLimits()
    strip = _png(Image.fromarray(_noise((4000, 600, 3))))
    assert decode_image(strip, limits).shape == (896, 448, 3)
    assert decode_image(strip, UNCAPPED).shape == (2987, 448, 3)
    assert decode_image(strip, FetchLimits(ship_long_side_fit="squash")).shape == (896, 448, 3)
    with pytest.raises(ValueError):
        FetchLimits(ship_shortest_side=448, ship_longest_side=300)


# --- the cap changes nothing the encoders see ------------------------------------------------


@pytest.fixture(scope="module")
def encoders(model_dir):
    device = choose_device("cpu")
    return {
        "open_clip": load_clip_model(
            ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}"), device, False
        ),
        "transformers": load_clip_model(
            ClipModelSpec(backend="transformers", model=str(model_dir / "hf_clip")), device, False
        ),
        "resnet": ResNetModel(
            ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt")), device, False
        ),
    }


@functools.cache
def _smooth(width: int, height: int) -> bytes:
    """A photo-like image (smooth gradients and shapes), as PNG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)
    green = 255 * (x + y) / (width + height)
    blue = 128 + 120 * np.sin((x - width / 2) * (y - height / 2) / 9000.0)
    pixels = np.stack([red, green, blue], axis=-1).clip(0, 255).astype(np.uint8)
    return _png(Image.fromarray(pixels))


@functools.cache
def _capped_and_uncapped(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    data = _smooth(*size)
    return decode_image(data, FetchLimits()), decode_image(data, UNCAPPED)


@pytest.mark.parametrize("size", [(600, 3000), (2600, 1000), (448, 2400)])
@pytest.mark.parametrize("encoder", ["open_clip", "transformers", "resnet"])
def test_capped_array_gives_the_encoders_what_the_uncapped_one_does(encoders, encoder, size):
    capped, uncapped = _capped_and_uncapped(size)
    assert max(capped.shape[:2]) == 896 < max(uncapped.shape[:2])
    model = encoders[encoder]
    seen_capped, seen_uncapped = model.preprocess_image(capped), model.preprocess_image(uncapped)
    assert seen_capped.shape == seen_uncapped.shape
    difference = float((seen_capped - seen_uncapped).abs().mean())
    embedded = model.encode_images([seen_capped, seen_uncapped])
    cosine = float(np.dot(embedded[0], embedded[1]))
    # Equal up to resampling: one grey level is ~0.015 in normalised units, an odd uncapped
    # width puts its centre half a pixel off the crop's, and the encoders' own int() of the
    # resized long side already stretches the uncapped image by up to 0.1 %.
    assert difference < 0.05, difference
    assert cosine > 0.9999, cosine
    # the check can fail: the same crop 24 px off-centre is visibly different
    shifted = np.roll(capped, 24, axis=int(np.argmax(capped.shape[:2])))
    assert float((model.preprocess_image(shifted) - seen_uncapped).abs().mean()) > 0.05


def test_squash_cap_gives_a_squashing_model_what_the_uncapped_one_does():
    squash = v2.Compose(
        [v2.ToImage(), v2.Resize((224, 224), antialias=True), v2.ToDtype(torch.float32, True)]
    )
    data = _smooth(2600, 1000)
    fit = FetchLimits(ship_long_side_fit="squash")
    capped, uncapped = decode_image(data, fit), decode_image(data, UNCAPPED)
    assert capped.shape == (448, 896, 3)
    assert (squash(capped) - squash(uncapped)).abs().mean() < 0.01
    # while a crop would have lost the sides that the squashing model sees
    cropped = decode_image(data, FetchLimits())
    assert (squash(cropped) - squash(uncapped)).abs().mean() > 0.05


# --- memory -------------------------------------------------------------------------------


async def test_fetcher_decodes_within_its_budget(monkeypatch):
    """Concurrent loads hold at most the budget (one giant at a time here)."""
    data = giant_png(*GIANTS["giant_gray16_png"])
    plan = open_image(data, FetchLimits())
    cost = plan.cost_bytes
    plan.close()
    fetcher = UrlFetcher(FetchLimits(decode_budget_bytes=200 * 1024 * 1024, decode_threads=4))
    peak = 0
    original = UrlFetcher.decode

    async def watched(self, payload):
        nonlocal peak
        task = asyncio.ensure_future(original(self, payload))
        while not task.done():
            peak = max(peak, self.decode_budget.in_use)
            await asyncio.sleep(0.005)
        return task.result()

    monkeypatch.setattr(UrlFetcher, "decode", watched)
    try:
        results = await asyncio.gather(*(fetcher.decode(data) for _ in range(3)))
    finally:
        await fetcher.close()
    assert all(pixels.shape == (448, 448, 3) for pixels in results)
    assert 0 < peak <= 200 * 1024 * 1024 < 2 * cost


async def test_a_cancelled_decode_holds_its_bytes_until_the_thread_is_done():
    """A request cancelled mid-decode (deadline, failed sibling) can't stop Pillow's thread, so
    its bytes stay counted until that thread ends; then they are given back."""
    fetcher = UrlFetcher(FetchLimits())
    try:
        task = asyncio.ensure_future(fetcher.decode(giant_png(*GIANTS["giant_rgba_png"])))
        for _ in range(2000):
            if fetcher.decode_budget.in_use:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # the thread has started (a 49 MP RGBA decode takes longer)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fetcher.decode_budget.in_use > 7000 * 7000 * 4  # still decoding
        for _ in range(6000):
            if not fetcher.decode_budget.in_use:
                break
            await asyncio.sleep(0.01)
        assert fetcher.decode_budget.in_use == 0
    finally:
        await fetcher.close()


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
async def test_bulk_images_decode_on_threads_of_lower_cpu_priority():
    """A bulk request's decode (and the preprocessing run after it) yields the CPU to
    interactive work: its thread is BULK_NICENESS nicer than an interactive decode's."""
    decoder = BudgetedDecoder(FetchLimits(decode_threads=1))

    async def niceness_of(priority_class: str) -> int:
        priority.CURRENT.set(priority_class)  # this task's own context, as a request's
        return await decoder.decode(image_bytes(), then=lambda pixels: _niceness())

    try:
        interactive = await asyncio.create_task(niceness_of(INTERACTIVE))
        bulk = await asyncio.create_task(niceness_of(BULK))
        again = await asyncio.create_task(niceness_of(INTERACTIVE))
    finally:
        decoder.close()
    assert interactive == again == _niceness()
    assert bulk == min(interactive + BULK_NICENESS, 19) > interactive
    assert decoder.slots.busy == 0 and decoder.budget.in_use == 0

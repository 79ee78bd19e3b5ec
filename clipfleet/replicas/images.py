"""What an image encoder is sent, and how each kind becomes its model's input.

- `ImageSource` (base64 text or uploaded bytes, straight from the ingress: no fetcher hop) and
  `EncodedImage` (bytes): decoded here, once, on the replica's decode threads within the
  fetch limits and decode budget (clipfleet.images.decode_pool), straight to the square the model's
  own preprocessing keeps (clipfleet.models.geometry: JPEG draft mode to the nearest scale above
  it, one resize, the centre kept), then preprocessed on the same thread;
- `np.ndarray`: pixels a fetcher decoded (image URLs), preprocessed as they are;
- `EncodedJpeg`: a JPEG a fetcher shipped undecoded (`fetch.gpu_decode`), decoded with nvJPEG
  on a GPU (clipfleet.images.gpu_decode), on the CPU elsewhere.

Decoding a client's bytes here is the client's doing, not the variant's: its failures are the
client's errors (4xx, never marked as the variant's fault: clipfleet/replicas/serving.py), and
its seconds (base64, the decode budget's wait, the decode) are left out of the latency the
canary guard judges (`client_seconds`), as they were when the fetcher decoded every image.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipfleet.config import FetchLimits
from clipfleet.images.decode_pool import BudgetedDecoder
from clipfleet.images.fetch import ImageSource, inline_bytes
from clipfleet.images.gpu_decode import (
    EncodedJpeg,
    decode_on_cpu,
    decode_on_device,
    jpeg_for_device,
    preprocess_on_device,
)
from clipfleet.observability import metrics
from clipfleet.replicas.cache import image_key

# Inline images larger than this are base64-decoded and hashed on a worker thread, not on the
# replica's event loop (a 20 MB image takes tens of milliseconds).
OFF_LOOP_BYTES = 1024 * 1024
# A JPEG shipped undecoded already passed the fetcher's limits; decoding it here on a CPU
# only needs the shrink-before-shipping size (the default, as in the fetcher).
JPEG_LIMITS = FetchLimits(max_pixels=2**62)

# Seconds spent on clients' image bytes during one encoder call, per item (the asyncio task
# that embeds it); None outside `client_seconds`.
_CLIENT_SPENT: contextvars.ContextVar[dict[Any, float] | None] = contextvars.ContextVar(
    "clipfleet_client_image_seconds", default=None
)


@contextlib.contextmanager
def client_seconds() -> Iterator[Callable[[], float]]:
    """Within the block, a function giving the longest time any one item of the call spent on
    its client's bytes (items decode side by side: the longest is what delayed the call)."""
    spent: dict[Any, float] = {}
    token = _CLIENT_SPENT.set(spent)
    try:
        yield lambda: max(spent.values(), default=0.0)
    finally:
        _CLIENT_SPENT.reset(token)


@contextlib.contextmanager
def _clients_time() -> Iterator[None]:
    """Counts the block's seconds as the current item's time on its client's bytes."""
    started = time.perf_counter()
    try:
        yield
    finally:
        spent = _CLIENT_SPENT.get()
        if spent is not None:
            item = asyncio.current_task()
            spent[item] = spent.get(item, 0.0) + time.perf_counter() - started


@dataclass(frozen=True)
class EncodedImage:
    """An image's file bytes, not decoded yet; `source` names where they came from."""

    data: bytes
    source: str = "upload"

    def key(self) -> bytes:
        """Embedding-cache key: the file's hash (as EncodedJpeg's: the same bytes, one key)."""
        return b"j" + hashlib.blake2b(self.data, digest_size=16).digest()


EncoderImage = np.ndarray | EncodedJpeg | EncodedImage | ImageSource


def inline_image(source: ImageSource, limits: FetchLimits) -> EncodedImage:
    """An inline source's bytes (base64 decoded, within max_bytes): what an encoder caches it
    under (`key()`), and what the ingress routes it by (clipfleet.ingress.affinity)."""
    kind = "base64" if source.base64 is not None else "upload"
    return EncodedImage(inline_bytes(source, limits), kind)


class ImageInputs:
    """One per encoder replica: `limits` are the application's fetch limits (what an image may
    be, the decode budget), applied to inline images exactly as the fetcher applies them."""

    def __init__(self, limits: FetchLimits | None = None) -> None:
        self.limits = limits or FetchLimits()
        self.decoder = BudgetedDecoder(self.limits)

    async def receive(
        self, image: EncoderImage, keyed: bool
    ) -> tuple[np.ndarray | EncodedJpeg | EncodedImage, bytes]:
        """(`received(image)`, its cache key, or b"" unless `keyed`); large inline images are
        decoded and hashed off the event loop."""

        def work() -> tuple[np.ndarray | EncodedJpeg | EncodedImage, bytes]:
            received = self.received(image)
            return received, self.key(received) if keyed else b""

        if not isinstance(image, ImageSource):
            return work()
        with _clients_time():
            if len(image.base64 or image.data or b"") > OFF_LOOP_BYTES:
                return await asyncio.to_thread(work)
            return work()

    def received(self, image: EncoderImage) -> np.ndarray | EncodedJpeg | EncodedImage:
        """An inline source as its bytes (base64 decoded, within max_bytes); others as sent."""
        return inline_image(image, self.limits) if isinstance(image, ImageSource) else image

    @staticmethod
    def key(image: np.ndarray | EncodedJpeg | EncodedImage) -> bytes:
        return image.key() if isinstance(image, EncodedJpeg | EncodedImage) else image_key(image)

    async def model_input(self, image: np.ndarray | EncodedJpeg | EncodedImage, model: Any) -> Any:
        """The model's preprocessed input for `image`."""
        if isinstance(image, EncodedImage):
            with _clients_time():
                return await self.decode(image, model)
        with metrics.timed_stage("preprocess"):
            return await asyncio.to_thread(preprocess, model, image)

    async def decode(self, image: EncodedImage, model: Any) -> Any:
        """Checked, decoded at the model's geometry and preprocessed, within the budget; on a
        GPU with `gpu_decode`, a JPEG goes to nvJPEG as a fetcher-shipped one would."""
        if self.limits.gpu_decode and model.plan.device.type == "cuda":
            jpeg = jpeg_for_device(image.data, self.limits)
            if jpeg is not None:
                metrics.record_image(image.source, len(image.data), jpeg.width * jpeg.height)
                return await asyncio.to_thread(preprocess, model, jpeg)
        geometry = model.input_geometry()
        limits = geometry.limits(self.limits) if geometry is not None else self.limits
        shipped: list[int] = []

        def prepare(pixels: np.ndarray) -> Any:
            shipped.append(pixels.shape[0] * pixels.shape[1])
            return model.preprocess_image(pixels)

        with metrics.counting_failures("decode"), metrics.timed_stage("decode"):
            pixels = await self.decoder.decode(image.data, limits, then=prepare)
        metrics.record_image(image.source, len(image.data), shipped[0])
        return pixels

    def close(self) -> None:
        self.decoder.close()


def preprocess(model: Any, image: np.ndarray | EncodedJpeg) -> Any:
    """Decoded pixels -> the model's input; a JPEG shipped undecoded (fetch.gpu_decode) is
    decoded on the model's GPU, or on the CPU where it has none."""
    if isinstance(image, EncodedJpeg):
        device = model.plan.device
        if device.type != "cuda":
            return model.preprocess_image(decode_on_cpu(image, JPEG_LIMITS))
        (decoded,) = decode_on_device([image], device)
        return preprocess_on_device(model, decoded)
    return model.preprocess_image(image)

"""What the CLIP and ResNet encoder deployments share: device set-up, batching, stats."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from clipfleet.batching import ForwardScheduler
from clipfleet.cache import EmbeddingCache, image_key
from clipfleet.config import EncoderConfig, FetchLimits
from clipfleet.gpu_decode import EncodedJpeg, decode_on_cpu, decode_on_device, preprocess_on_device
from clipfleet.models.base import ImageEncoderModel
from clipfleet.models.device import DevicePlan, choose_device, set_torch_threads
from clipfleet.models.sizing import ForwardLease, forward_slots, forward_threads
from clipfleet.observability import metrics
from clipfleet.observability.resources import process_resources
from clipfleet.observability.tracing import traced

logger = logging.getLogger("ray.serve")

DEFAULT_CONFIG = EncoderConfig()
# @serve.batch hands batches to the ForwardScheduler, which merges those that queue behind a
# running forward; up to this many may be waiting there (each holds at least one item).
MERGEABLE_BATCHES = 64
# A JPEG shipped undecoded already passed the fetcher's limits; decoding it here on a CPU
# only needs the shrink-before-shipping size (the default, as in the fetcher).
JPEG_LIMITS = FetchLimits(max_pixels=2**62)

# The encoders' @serve.batch: its sizes are replaced live by reconfigure().
mergeable_batch = serve.batch(
    max_batch_size=DEFAULT_CONFIG.max_batch_size,
    batch_wait_timeout_s=DEFAULT_CONFIG.batch_wait_timeout_s,
    max_concurrent_batches=MERGEABLE_BATCHES,
)


def apply_encoder_config(encoder: Any, user_config: dict | None, batched: list) -> EncoderConfig:
    """Validate an encoder's user_config (EncoderConfig: unknown keys rejected) and apply it
    live: the @serve.batch sizes, the scheduler's merge bound, the cache."""
    config = EncoderConfig(**(user_config or {}))
    for method in batched:
        method.set_max_batch_size(config.max_batch_size)
        method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
    encoder.scheduler.max_batch_size = config.max_batch_size
    if config.cache != encoder.cache.config:
        encoder.cache = EmbeddingCache(config.cache)
    encoder.config = config
    return config


async def cached_embedding(
    cache: EmbeddingCache, key: bytes, kind: str, compute: Callable[[], Awaitable[np.ndarray]]
) -> np.ndarray:
    """The cached vector for `key`, or `compute()`'s, then cached; hits and misses counted."""
    vector = cache.get(key)
    if cache.config.enabled:
        metrics.record_cache(vector is not None, kind)
    if vector is None:
        vector = await compute()
        cache.put(key, vector)
    return vector


def prepare_replica() -> DevicePlan:
    """Choose the device and size torch's thread pool to the node's cores (see
    clipfleet.models.sizing: a CPU reservation is a scheduling hint, not a core budget)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    set_torch_threads(forward_threads(cpus))
    return choose_device()


def node_lease(plan: DevicePlan) -> ForwardLease | None:
    """The node's CPU forward lease, shared with the other encoders on it; none on a GPU."""
    slots = forward_slots()
    return ForwardLease(slots) if plan.device.type == "cpu" and slots else None


class BatchedImageEncoder:
    """Per item: preprocess on the event loop's thread pool; per batch: one forward pass."""

    model: ImageEncoderModel

    def _forwards(self) -> dict:
        return {"image": self.model.encode_images}

    def _init_stats(self) -> None:
        self.cache = EmbeddingCache(self.config.cache)
        forwards = self._forwards()
        self.lease = node_lease(self.model.plan)
        if self.lease is not None:
            forwards = {kind: self.lease.wrap(forward) for kind, forward in forwards.items()}
        self.batch_sizes: dict[str, Counter[int]] = {kind: Counter() for kind in forwards}
        self.scheduler = ForwardScheduler(
            forwards, self.config.max_batch_size, on_batch=self._count_batch
        )
        self.warmup_seconds = self.model.warmup()
        process_resources()  # starts this process's CPU % window

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """user_config: EncoderConfig (batching, fault injection); unknown keys are rejected.
        Async: it runs on the event loop, never on a thread beside the requests."""
        config = apply_encoder_config(self, user_config, self._batched_methods())
        logger.info("encoder config set to %s", config.model_dump())

    async def _inject_faults(self) -> None:
        if self.config.fault_latency_s:
            await asyncio.sleep(self.config.fault_latency_s)
        if self.config.fault_error_ratio and random.random() < self.config.fault_error_ratio:
            raise RuntimeError("fault injected by user_config.fault_error_ratio")

    def _batched_methods(self) -> list:
        return [self._image_batch]

    @traced("encoder.embed_image")
    async def embed_image(
        self, image: np.ndarray | EncodedJpeg, timed: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """The embedding; with `timed`, (embedding, seconds this replica spent on it: queue,
        preprocess and forward), the latency the ingress judges a canary on."""
        started = time.perf_counter()
        vector = await self._embed_image(image)
        return (vector, time.perf_counter() - started) if timed else vector

    async def _embed_image(self, image: np.ndarray | EncodedJpeg) -> np.ndarray:
        await self._inject_faults()
        key = image.key() if isinstance(image, EncodedJpeg) else image_key(image)

        async def compute() -> np.ndarray:
            with metrics.timed_stage("preprocess"):
                pixels = await asyncio.to_thread(self._preprocess, image)
            return await self._image_batch(pixels)

        return await cached_embedding(self.cache, key, "image", compute)

    def _preprocess(self, image: np.ndarray | EncodedJpeg) -> torch.Tensor:
        """Decoded pixels -> the model's input; a JPEG shipped undecoded (fetch.gpu_decode) is
        decoded on this replica's GPU, or on its CPU where it has none."""
        if isinstance(image, EncodedJpeg):
            device = self.model.plan.device
            if device.type != "cuda":
                return self.model.preprocess_image(decode_on_cpu(image, JPEG_LIMITS))
            (decoded,) = decode_on_device([image], device)
            return preprocess_on_device(self.model, decoded)
        return self.model.preprocess_image(image)

    @mergeable_batch
    async def _image_batch(self, pixel_batch: list[torch.Tensor]) -> list[np.ndarray]:
        return await self.scheduler.run("image", pixel_batch)

    def _count_batch(self, kind: str, size: int, seconds: float) -> None:
        """Sizes of the forwards that actually ran (after the scheduler's merging)."""
        self.batch_sizes[kind][size] += 1
        metrics.record_batch(kind, size)
        metrics.record_stage("encode", seconds)

    async def describe(self) -> dict[str, Any]:
        context = serve.get_replica_context()
        return {
            **self.model.info.as_dict(),
            "replica_id": context.replica_id.unique_id,
            "ready": True,
            "warmup_seconds": round(self.warmup_seconds, 3),
            "config": self.config.model_dump(),
            "batch_sizes": dict(sorted(self.batch_sizes["image"].items())),
            **{
                f"{kind}_batch_sizes": dict(sorted(sizes.items()))
                for kind, sizes in self.batch_sizes.items()
                if kind != "image"
            },
            "pending": self.scheduler.pending(),
            "cache": self.cache.stats(),
            "torch_threads": torch.get_num_threads(),
            "forward_lease": self.lease.stats() if self.lease is not None else None,
            "process": process_resources(self.model.info.device),
        }

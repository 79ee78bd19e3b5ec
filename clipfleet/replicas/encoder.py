"""An image encoder replica without Ray: cache, ForwardScheduler, fault knobs, live config,
stats and `describe`. ResNetEncoder is this over a torchvision classifier."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import torch

from clipfleet.config import EncoderConfig, FetchLimits, ResNetSpec
from clipfleet.ingress.fanout import gather_items
from clipfleet.ingress.priority import classed, prioritized
from clipfleet.models.base import ImageEncoderModel, TextTokens
from clipfleet.models.device import DevicePlan
from clipfleet.models.embedding_space import space_of, stamp
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.resnet import ResNetModel
from clipfleet.models.sizing import ForwardLease
from clipfleet.observability import metrics
from clipfleet.observability.resources import process_resources
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.batching import ForwardScheduler
from clipfleet.replicas.cache import EmbeddingCache
from clipfleet.replicas.images import EncoderImage, ImageInputs, client_seconds
from clipfleet.replicas.serving import StallGuard, serving
from clipfleet.replicas.shared_cache import SharedCache

logger = logging.getLogger("ray.serve")

DEFAULT_CONFIG = EncoderConfig()


def apply_encoder_config(
    encoder: Any, user_config: dict | None, batched: Sequence
) -> EncoderConfig:
    """Validate an encoder's user_config (EncoderConfig: unknown keys rejected) and apply it
    live: the batched methods' sizes (Serve's @serve.batch), the scheduler's merge bound, the
    classes' shares (forwards and decode threads), the cache."""
    config = EncoderConfig(**(user_config or {}))
    for method in batched:
        method.set_max_batch_size(config.max_batch_size)
        method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
    encoder.scheduler.max_batch_size = config.max_batch_size
    encoder.scheduler.bulk_every = config.bulk_every
    encoder.scheduler.bulk_max_batch_size = config.bulk_max_batch_size
    encoder.inputs.decoder.slots.turns.bulk_every = config.bulk_every
    if config.cache != encoder.cache.config:
        old = encoder.cache
        encoder.cache = EmbeddingCache(config.cache, shared_level(config, encoder))
        if old.shared is not None:
            asyncio.get_running_loop().create_task(old.shared.close())
    encoder.config = config
    return config


def shared_level(config: EncoderConfig, encoder: Any) -> SharedCache | None:
    """The shared second level, namespaced by the model's space; None when not configured (or
    for an encoder without one space, e.g. a multiplexed one: logged)."""
    shared = config.cache.shared
    if shared is None or not config.cache.enabled:
        return None
    space = getattr(encoder, "cache_space", None)
    if space is None:
        logger.warning("cache.shared is ignored by %s", type(encoder).__name__)
        return None
    return SharedCache(shared, space)


async def cached_embedding(
    cache: EmbeddingCache, key: bytes, kind: str, compute: Callable[[], Awaitable[np.ndarray]]
) -> np.ndarray:
    """The cached vector for `key` (this replica's LRU, then the shared level), or
    `compute()`'s, then cached in both; hits and misses counted."""
    vector = cache.get(key)
    if cache.config.enabled:
        metrics.record_cache(vector is not None, kind)
    if vector is None:
        if cache.shared is not None:
            vector = await cache.shared.get(key, kind)
        if vector is None:
            vector = await compute()
            if cache.shared is not None:
                cache.shared.put_soon(key, vector)
        cache.put(key, vector)
    return vector


async def embed_timed(
    embedding: Awaitable[np.ndarray], timed: bool
) -> np.ndarray | tuple[np.ndarray, float]:
    """`embedding`'s vector; with `timed`, (vector, seconds this replica spent on it: queue,
    preprocess and forward), the latency the ingress judges a canary on. Time spent decoding
    a client's inline image is not in it (`client_seconds`): a client picks its images."""
    started = time.perf_counter()
    with client_seconds() as clients:
        vector = await embedding
        seconds = time.perf_counter() - started - clients()
    return (vector, max(seconds, 0.0)) if timed else vector


async def embed_tokenized(
    model: Any,
    texts: list[str],
    count_tokens: bool,
    embed_one: Callable[[str, TextTokens], Awaitable[np.ndarray]],
) -> np.ndarray | tuple[np.ndarray, list[int]]:
    """The texts' (N, D) vectors, each text tokenized once by `model` (in a thread: bounded,
    but CPU work) and embedded by `embed_one(text, tokens)`; with `count_tokens`, also the
    token count of each, from that same tokenization."""
    tokenized = await asyncio.to_thread(model.tokenize, list(texts))
    vectors = await asyncio.gather(*map(embed_one, texts, tokenized))
    matrix = np.stack(vectors)
    return (matrix, [tokens.count for tokens in tokenized]) if count_tokens else matrix


async def embed_each(
    embed: Callable[[Any], Awaitable[np.ndarray]], images: Sequence[Any]
) -> np.ndarray:
    """(N, D): `embed` of each image, concurrently (each joins the batch queue on its own).
    The first failure cancels the others and is raised naming its item (`images[2]`)."""
    return np.stack(await gather_items([embed(image) for image in images], "images"))


async def embed_both(image: Awaitable[np.ndarray], text: Awaitable[np.ndarray]) -> tuple:
    """(image vector, text vector), computed side by side (each in its own batch queue); the
    first failure cancels the other and is raised."""
    tasks = [asyncio.ensure_future(image), asyncio.ensure_future(text)]
    try:
        image_vector, text_vector = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # a no-op once done; stops the other side of a failed pair
    return image_vector, text_vector


async def inject_faults(config: EncoderConfig) -> None:
    """user_config's fault knobs (rollout drills): added latency, then a random error."""
    if config.fault_latency_s:
        await asyncio.sleep(config.fault_latency_s)
    if config.fault_error_ratio and random.random() < config.fault_error_ratio:
        raise RuntimeError("fault injected by user_config.fault_error_ratio")


def priority_view(scheduler: ForwardScheduler, inputs: ImageInputs) -> dict[str, Any]:
    """What `describe` says about priority classes, per class: forwards run and items waiting
    for one; decodes started and waiting for a decode thread."""
    slots = inputs.decoder.slots
    return {
        "bulk_every": scheduler.bulk_every,
        "bulk_max_batch_size": scheduler.bulk_max_batch_size,
        "forwards": dict(scheduler.forwards_by_class),
        "pending": scheduler.pending_by_class(),
        "decodes": dict(slots.turns.served),
        "decodes_waiting": slots.waiting(),
    }


def stall_view(guard: StallGuard, config: EncoderConfig) -> dict[str, Any]:
    """What `describe` says about forwards and stalls."""
    return {
        "stall_limit_s": config.stall_limit_s,
        "running_forward_s": round(guard.running_for(), 3),
        "slowest_forward_s": round(guard.slowest_forward_s, 3),
        "stalled": guard.stalled,
    }


class ImageEncoder:
    """Per item: decode and/or preprocess on a worker thread; per batch: one forward pass.

    `_batch_image(pixels)` is the per-item hook: here it hands the scheduler a one-item list
    (concurrent items still merge there while a forward runs); a Serve shell replaces it with
    its `@serve.batch` method, which takes a list."""

    def __init__(
        self,
        model: ImageEncoderModel,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
        limits: FetchLimits | None = None,
    ) -> None:
        """lease: the node's CPU forward lease, shared with the other encoders on it; limits:
        the application's fetch limits, which inline images are decoded within."""
        started = time.perf_counter()
        self.model = model
        self.replica_id = replica_id
        self.inputs = ImageInputs(limits)
        self.config = DEFAULT_CONFIG
        self.cache = EmbeddingCache(self.config.cache)
        self.lease = lease
        self.guard = StallGuard(replica_id)
        forwards = {kind: self.guard.watch(f) for kind, f in self._forwards().items()}
        if lease is not None:
            forwards = {kind: lease.wrap(forward) for kind, forward in forwards.items()}
        self.batch_sizes: dict[str, Counter[int]] = {kind: Counter() for kind in forwards}
        self.scheduler = ForwardScheduler(
            forwards, self.config.max_batch_size, on_batch=self._count_batch
        )
        self.warmup_seconds = model.warmup()
        stamp(model)  # its embedding space and int8 range, before it serves
        process_resources()  # starts this process's CPU % window
        # From the constructor's start to ready: what a scaled-to-zero profile's first request
        # waits for (clipfleet/ingress/coldstart.py), less the process's own start.
        self.cold_start_s = model.info.load_seconds + time.perf_counter() - started

    def _forwards(self) -> dict:
        return {"image": self.model.encode_images}

    @property
    def cache_space(self) -> str:
        """The shared cache's namespace: the model's space (clipfleet.replicas.shared_cache)."""
        return self.model.info.extra["model_space"]

    async def reconfigure(self, user_config: dict[str, Any], batched: Sequence = ()) -> None:
        """user_config: EncoderConfig (batching, cache, fault injection); unknown keys are
        rejected. `batched`: the shell's @serve.batch methods, resized live. Async: it runs on
        the event loop, never on a thread beside the requests."""
        config = apply_encoder_config(self, user_config, batched)
        await self.guard.apply_drill(config)
        logger.info("encoder config set to %s", config.model_dump())

    async def check_health(self) -> None:
        """Serve's health check: fails while a forward has run past `stall_limit_s`, so Serve
        replaces a hung replica (clipfleet/replicas/serving.py)."""
        self.guard.check(self.config.stall_limit_s, self.scheduler.fail_all)

    @traced("encoder.embed_image")
    @prioritized
    @serving
    async def embed_image(
        self, image: EncoderImage, timed: bool = False, route_key: bytes | None = None
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """The embedding; with `timed`, also the seconds spent here (see `embed_timed`).
        `route_key` is read by the content-affinity router (clipfleet.ingress.affinity), not
        here."""
        return await embed_timed(self._embed_image(image), timed)

    @traced("encoder.embed_images")
    @prioritized
    @serving
    async def embed_images(
        self, images: list[EncoderImage], timed: bool = False, route_key: bytes | None = None
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """(N, D) for a request's N images in one call (see `embed_each`); with `timed`, also
        the seconds spent here. `route_key`: as embed_image's."""
        return await embed_timed(embed_each(self._embed_image, images), timed)

    async def _embed_image(self, image: EncoderImage) -> np.ndarray:
        await inject_faults(self.config)
        received, key = await self.inputs.receive(image, keyed=self.cache.config.enabled)

        async def compute() -> np.ndarray:
            pixels = await self.inputs.model_input(received, self.model)
            return await self._batch_image(classed(pixels))

        return await cached_embedding(self.cache, key, "image", compute)

    async def _batch_image(self, pixels: torch.Tensor) -> np.ndarray:
        (vector,) = await self._forward_images([pixels])
        return vector

    async def _forward_images(self, pixel_batch: list[torch.Tensor]) -> list[np.ndarray]:
        return await self.scheduler.run("image", pixel_batch)

    async def space(self) -> dict[str, Any]:
        """The model's space (clipfleet.models.embedding_space): model_space, int8_limit,
        embed_dim."""
        return space_of(self.model)

    def _count_batch(self, kind: str, size: int, seconds: float) -> None:
        """Sizes of the forwards that actually ran (after the scheduler's merging)."""
        self.batch_sizes[kind][size] += 1
        metrics.record_batch(kind, size)
        metrics.record_stage("encode", seconds)

    async def describe(self) -> dict[str, Any]:
        return {
            **self.model.info.as_dict(),
            "replica_id": self.replica_id,
            "ready": True,
            "warmup_seconds": round(self.warmup_seconds, 3),
            "cold_start_s": round(self.cold_start_s, 3),
            "config": self.config.model_dump(),
            "batch_sizes": dict(sorted(self.batch_sizes["image"].items())),
            **{
                f"{kind}_batch_sizes": dict(sorted(sizes.items()))
                for kind, sizes in self.batch_sizes.items()
                if kind != "image"
            },
            "pending": self.scheduler.pending(),
            "priority": priority_view(self.scheduler, self.inputs),
            "stall": stall_view(self.guard, self.config),
            "cache": self.cache.stats(),
            # the square images are decoded to for this model (None: the fetch default)
            "input_geometry": geometry.as_dict()
            if (geometry := self.model.input_geometry())
            else None,
            "torch_threads": torch.get_num_threads(),
            "forward_lease": self.lease.stats() if self.lease is not None else None,
            "process": process_resources(self.model.info.device),
        }


class ResNetEncoder(ImageEncoder):
    """Any torchvision classifier's features, on the spec's runtime."""

    def __init__(
        self,
        spec: ResNetSpec,
        plan: DevicePlan,
        random_weights: bool = False,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
        limits: FetchLimits | None = None,
    ) -> None:
        model = apply_runtime(ResNetModel(spec, plan, random_weights), spec)
        super().__init__(model, replica_id, lease, limits)

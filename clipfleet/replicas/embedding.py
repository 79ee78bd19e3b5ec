"""The steps every encoder's requests take (clipfleet.replicas.core): live config, the two cache
levels, timing, fault drills, tokenizing once, per-item fan-out, and `describe`'s views."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from clipfleet.config import EncoderConfig
from clipfleet.ingress.fanout import gather_items
from clipfleet.models.base import TextTokens
from clipfleet.observability import metrics
from clipfleet.replicas.batching import ForwardScheduler
from clipfleet.replicas.cache import EmbeddingCache
from clipfleet.replicas.images import ImageInputs, client_seconds
from clipfleet.replicas.serving import StallGuard
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
    encoder.scheduler.bulk_preempt = config.bulk_preempt
    encoder.scheduler.bulk_slice_s = config.bulk_slice_s
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
        "bulk_preempt": scheduler.bulk_preempt,
        "bulk_slice_s": scheduler.bulk_slice_s,
        "bulk_parkings": scheduler.parkings,
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

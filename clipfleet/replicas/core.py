"""The one encoder core every encoder replica runs (issue 25): per request, decode and/or
preprocess on a worker thread, the two cache levels, fault drills and timing; per batch, one
forward through the ForwardScheduler; live `reconfigure`, the stall guard, stats, `describe`.

What differs between encoders is held by two objects the core owns, not by overriding its
methods:
- its **models** (`Models`): where the model of a request comes from. `OneModel`
  (clipfleet/replicas/encoder.py) is the plain encoders' single model; `MultiplexedModels`
  (clipfleet/replicas/multiplexed.py) is a pool of models loaded by id through an LRU. A pool's
  batches hold one model id each: the scheduler runs each (kind, model id) in its own forward;
- its **batch queue** (`BatchQueue`): how items reach a forward. `DirectQueue` hands the
  scheduler one-item lists (concurrent items still merge there while a forward runs); a Serve
  shell passes its `@serve.batch` queue (deployments/_encoder.py), resized by `reconfigure`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from clipfleet.config import FetchLimits
from clipfleet.ingress.priority import classed, prioritized
from clipfleet.models.base import TextTokens
from clipfleet.models.embedding_space import stamp
from clipfleet.models.sizing import ForwardLease
from clipfleet.observability import metrics
from clipfleet.observability.resources import process_resources
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.batching import Forward, ForwardScheduler
from clipfleet.replicas.cache import EmbeddingCache, text_key
from clipfleet.replicas.embedding import (
    DEFAULT_CONFIG,
    apply_encoder_config,
    cached_embedding,
    embed_both,
    embed_each,
    embed_timed,
    embed_tokenized,
    inject_faults,
    priority_view,
    stall_view,
)
from clipfleet.replicas.images import EncoderImage, ImageInputs
from clipfleet.replicas.serving import StallGuard, serving

logger = logging.getLogger("ray.serve")

# The model's batched forward for each kind of work.
FORWARDS = {"image": "encode_images", "text": "encode_tokens"}


class Served(Protocol):
    """The model a request is served by: `model_id` None for an encoder's one model."""

    model_id: str | None
    model: Any


class Models(Protocol):
    """Where the core gets the model of a request (see the module docstring)."""

    kinds: tuple[str, ...]  # the kinds of work its models do ("image", "text")
    fixed: Any  # the one model, whose forwards are set up once; None for a pool
    cache_space: str | None  # the shared cache's namespace; None: no shared level
    device: str

    async def for_request(self, count: bool = True) -> Served:
        """The model of the current request (`count`: a pool counts it as a hit)."""

    def describe(self) -> Mapping[str, Any]:
        """What `describe` says of the models."""


class BatchQueue(Protocol):
    """How one item reaches a forward: `image(pixels)` / `text(tokens)` -> its vector."""

    async def image(self, pixels: torch.Tensor) -> np.ndarray: ...

    async def text(self, tokens: TextTokens) -> np.ndarray: ...

    def resizable(self) -> list:
        """The batching methods `reconfigure` resizes (Serve's `@serve.batch` ones)."""


class DirectQueue:
    """No batching of its own: each item goes to the core's forward as a one-item list, and
    items that arrive while a forward runs merge in the scheduler."""

    def __init__(self, core: EncoderCore) -> None:
        self.core = core

    def resizable(self) -> list:
        return []

    async def image(self, pixels: torch.Tensor) -> np.ndarray:
        (vector,) = await self.core._forward_images([pixels])
        return vector

    async def text(self, tokens: TextTokens) -> np.ndarray:
        (vector,) = await self.core._forward_texts([tokens])
        return vector


QueueFactory = Callable[["EncoderCore"], BatchQueue]


def model_key(model_id: str | None) -> bytes:
    """The cache keys' prefix: the same image or text, per model of a pool."""
    return b"" if model_id is None else b"m" + model_id.encode() + b"\x00"


class EncoderCore:
    """An encoder replica over `models`, batching through `queue(self)`."""

    def __init__(
        self,
        models: Models,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
        limits: FetchLimits | None = None,
        queue: QueueFactory = DirectQueue,
    ) -> None:
        """lease: the node's CPU forward lease, shared with the other encoders on it; limits:
        the application's fetch limits, which inline images are decoded within."""
        self.models = models
        self.replica_id = replica_id
        self.lease = lease
        self.inputs = ImageInputs(limits)
        self.config = DEFAULT_CONFIG
        self.cache = EmbeddingCache(self.config.cache)
        self.guard = StallGuard(replica_id)
        self.batch_sizes: dict[str, Counter[int]] = {kind: Counter() for kind in models.kinds}
        forwards = {}
        if models.fixed is not None:
            forwards = {kind: self._forward_of(models.fixed, kind) for kind in models.kinds}
        self.scheduler = ForwardScheduler(
            forwards, self.config.max_batch_size, on_batch=self._count_batch
        )
        self.queue = queue(self)
        process_resources()  # starts this process's CPU % window

    def _forward_of(self, model: Any, kind: str) -> Forward:
        """`model`'s forward for `kind`, timed by the stall guard inside the node's lease."""
        forward = self.guard.watch(getattr(model, FORWARDS[kind]))
        return self.lease.wrap(forward) if self.lease is not None else forward

    @property
    def cache_space(self) -> str | None:
        """The shared cache's namespace (clipfleet.replicas.shared_cache)."""
        return self.models.cache_space

    async def reconfigure(self, user_config: dict[str, Any], batched: Sequence = ()) -> None:
        """user_config: EncoderConfig (batching, cache, stall limit, fault injection); unknown
        keys are rejected. The batch queue's methods (and `batched`'s) are resized live. Async:
        it runs on the event loop, never on a thread beside the requests."""
        resized = [*self.queue.resizable(), *batched]
        config = apply_encoder_config(self, user_config, resized)
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
        served = await self.models.for_request()
        received, key = await self.inputs.receive(image, keyed=self.cache.config.enabled)

        async def compute() -> np.ndarray:
            pixels = await self.inputs.model_input(received, served.model)
            return await self.queue.image(classed(pixels))

        return await cached_embedding(
            self.cache, model_key(served.model_id) + key, "image", compute
        )

    @traced("encoder.embed_text")
    @prioritized
    @serving
    async def embed_text(self, text: str, route_key: bytes | None = None) -> np.ndarray:
        """`route_key`: for the content-affinity router (clipfleet.ingress.affinity), unused
        here."""
        await inject_faults(self.config)
        return await self._text_vector(text)

    async def _text_vector(self, text: str) -> np.ndarray:
        return (await self._embed_texts([text], False))[0]

    @traced("encoder.embed_pair")
    @prioritized
    @serving
    async def embed_pair(
        self, image: EncoderImage, text: str, timed: bool = False, route_key: bytes | None = None
    ) -> tuple[np.ndarray, np.ndarray] | tuple[tuple[np.ndarray, np.ndarray], float]:
        """A /v1/score pair's two vectors in one call; with `timed`, also the seconds spent
        here (see `embed_timed`). `route_key`: the image's, for the content-affinity router."""
        pair = embed_both(self._embed_image(image), self._text_vector(text))
        return await embed_timed(pair, timed)

    @traced("encoder.embed_texts")
    @prioritized
    @serving
    async def embed_texts(
        self, texts: list[str], count_tokens: bool = False, route_key: bytes | None = None
    ) -> np.ndarray | tuple[np.ndarray, list[int]]:
        """(N, D) for N texts, each tokenized once by the request's model (cut to what its
        tokenizer can use) and joining the shared batch queue with other requests'; with
        `count_tokens`, also the tokens per text (start/end included, truncated to the
        context): usage figures. `route_key`: for the content-affinity router, unused here."""
        await inject_faults(self.config)
        return await self._embed_texts(texts, count_tokens)

    async def _embed_texts(
        self, texts: list[str], count_tokens: bool
    ) -> np.ndarray | tuple[np.ndarray, list[int]]:
        served = await self.models.for_request()
        prefix = model_key(served.model_id)

        async def embed_one(text: str, tokens: TextTokens) -> np.ndarray:
            return await cached_embedding(
                self.cache,
                prefix + text_key(text),
                "text",
                lambda: self.queue.text(classed(tokens)),
            )

        return await embed_tokenized(served.model, texts, count_tokens, embed_one)

    async def _forward_images(self, pixel_batch: list[torch.Tensor]) -> list[np.ndarray]:
        return await self._forward("image", pixel_batch)

    async def _forward_texts(self, tokens: list[TextTokens]) -> list[np.ndarray]:
        return await self._forward("text", tokens)

    async def _forward(self, kind: str, items: list) -> list[np.ndarray]:
        """One batch's vectors: the request's model (a batch holds one model id: Serve's batching
        and the scheduler's queues keep ids apart), through the scheduler."""
        served = await self.models.for_request(count=False)  # the requests were counted
        if served.model_id is None:
            return await self.scheduler.run(kind, items)
        forward = self._forward_of(served.model, kind)
        return await self.scheduler.run(kind, items, served.model_id, forward)

    def _count_batch(self, kind: str, size: int, seconds: float) -> None:
        """Sizes of the forwards that actually ran (after the scheduler's merging)."""
        self.batch_sizes[kind][size] += 1
        metrics.record_batch(kind, size)
        metrics.record_stage("encode", seconds)

    async def space(self) -> dict[str, Any]:
        """The request's model's space (clipfleet.models.embedding_space): model_space,
        int8_limit, embed_dim (stamped here if a custom loader did not)."""
        model = (await self.models.for_request(count=False)).model
        return await asyncio.to_thread(stamp, model)

    async def describe(self) -> dict[str, Any]:
        return {
            **self.models.describe(),
            "replica_id": self.replica_id,
            "ready": True,
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
            "torch_threads": torch.get_num_threads(),
            "forward_lease": self.lease.stats() if self.lease is not None else None,
            "process": process_resources(self.models.device),
        }

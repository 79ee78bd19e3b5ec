"""A multiplexed CLIP encoder replica without Ray: many models of one backend, by id.

Serve routes a request by its `multiplexed_model_id`, which the replica reads per request; here
that is `_requested_model_id()` (a context variable; the shell reads Serve's). The LRU is
`ModelLru`, Ray's order of work reduced to its essentials; the shell replaces it with
`@serve.multiplexed`. Validation and loading live in clipfleet.models.catalog (no bad id or failing
checkpoint ever evicts a loaded model).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from clipfleet.config import FetchLimits, MultiplexedProfileSpec
from clipfleet.errors import InvalidRequestError
from clipfleet.ingress.priority import classed, prioritized
from clipfleet.models.base import TextTokens
from clipfleet.models.catalog import LoadedModel, ModelCatalog, ModelPool, ResolvedModel
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import DevicePlan
from clipfleet.models.embedding_space import stamp
from clipfleet.observability import metrics
from clipfleet.observability.resources import process_resources
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.batching import ForwardScheduler
from clipfleet.replicas.cache import EmbeddingCache, text_key
from clipfleet.replicas.encoder import (
    DEFAULT_CONFIG,
    apply_encoder_config,
    cached_embedding,
    embed_both,
    embed_each,
    embed_timed,
    embed_tokenized,
    priority_view,
    stall_view,
)
from clipfleet.replicas.images import EncoderImage, ImageInputs
from clipfleet.replicas.serving import StallGuard, serving

# The model id of the request being served, where no Serve replica context provides one.
REQUESTED_MODEL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "clipfleet_multiplexed_model_id", default=""
)


class ModelLru:
    """serve.multiplexed's _ModelMultiplexWrapper.load_model, reduced to its order of work: on a
    miss with a full cache it evicts the least-recently-used model *before* calling the loader."""

    def __init__(self, loader: Callable, capacity: int) -> None:
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.loader_calls: list[str] = []
        self._loader = loader
        self._capacity = capacity

    async def get(self, model_id: str) -> Any:
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        if len(self.models) >= self._capacity:
            self.models.popitem(last=False)
        self.loader_calls.append(model_id)
        self.models[model_id] = await self._loader(model_id)
        return self.models[model_id]


class MultiplexedClipEncoder:
    """`_batch_image(pixels)` / `_batch_text(tokens)` are per-item hooks (see ImageEncoder)."""

    def __init__(
        self,
        profile: str,
        spec: MultiplexedProfileSpec,
        plan: DevicePlan,
        random_weights: bool = False,
        replica_id: str = LOCAL_REPLICA,
        load: Callable[[ResolvedModel], Any] | None = None,
        limits: FetchLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """load: blocking, resolved spec -> ClipModel (default: load and warm up on `plan`);
        limits: the application's fetch limits, which inline images are decoded within;
        clock: when models were last used (idle_ttl_s)."""
        self.plan = plan
        self.inputs = ImageInputs(limits)
        self.random_weights = random_weights
        self.replica_id = replica_id
        self.pool = ModelPool(ModelCatalog(profile, spec), load or self._build)
        self.lru = ModelLru(self.pool.take, spec.max_models_per_replica)
        self.idle_ttl_s = spec.idle_ttl_s
        self.last_used: dict[str, float] = {}
        self._clock = clock
        self._sweeper: asyncio.Task | None = None
        self.config = DEFAULT_CONFIG
        self.cache = EmbeddingCache(self.config.cache)
        self.scheduler = ForwardScheduler({}, self.config.max_batch_size, self._count_batch)
        self.guard = StallGuard(replica_id)
        process_resources()

    def _build(self, resolved: ResolvedModel) -> Any:
        model = load_clip_model(resolved.spec, self.plan, resolved.random_weights)
        model.warmup()
        stamp(model)
        return model

    async def _lru_get(self, model_id: str) -> LoadedModel:
        return await self.lru.get(model_id)

    def _lru_models(self) -> dict[str, LoadedModel]:
        return dict(self.lru.models)

    def _unload(self, model_id: str) -> None:
        """Take `model_id` out of the LRU (the shell: out of Serve's, routing updated)."""
        self.lru.models.pop(model_id, None)

    def unload_idle(self) -> list[str]:
        """Unload the resident models no request used for idle_ttl_s; their ids."""
        if self.idle_ttl_s is None:
            return []
        now = self._clock()
        idle = [
            model_id
            for model_id in self._lru_models()
            if now - self.last_used.get(model_id, now) >= self.idle_ttl_s
        ]
        for model_id in idle:
            self._unload(model_id)
            self.last_used.pop(model_id, None)
            self.pool.note_idle_unload(model_id)
        if idle:
            gc.collect()  # the weights' memory back now, not at some later collection
        return idle

    async def _sweep_idle(self) -> None:
        interval = min(max(self.idle_ttl_s / 4, 0.5), 30.0)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                self.unload_idle()

    def _note_use(self, model_id: str) -> None:
        self.last_used[model_id] = self._clock()
        if self.idle_ttl_s is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    def _requested_model_id(self) -> str:
        return REQUESTED_MODEL.get()

    async def model(self, model_id: str, count: bool = True) -> LoadedModel:
        """The loaded model for `model_id`, through the LRU (hits counted unless `count` is
        false: a batch or a side lookup of a request already counted)."""
        loaded = await self.pool.get(model_id, self._lru_get, self._lru_models, count=count)
        self._note_use(model_id)
        return loaded

    async def _model(self, count: bool = True) -> LoadedModel:
        model_id = self._requested_model_id()
        if not model_id:
            raise InvalidRequestError("name a model as <profile>:<model-id>", "model", status=422)
        return await self.model(model_id, count)

    async def reconfigure(self, user_config: dict[str, Any], batched: list | tuple = ()) -> None:
        """user_config: EncoderConfig (batching, cache, stall limit, drills); unknown keys are
        rejected."""
        config = apply_encoder_config(self, user_config, batched)
        await self.guard.apply_drill(config)

    async def check_health(self) -> None:
        """Serve's health check: fails while a forward has run past `stall_limit_s`."""
        self.guard.check(self.config.stall_limit_s, self.scheduler.fail_all)

    @traced("multiplexed.embed_image")
    @prioritized
    @serving
    async def embed_image(
        self, image: EncoderImage, timed: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """As ClipEncoder.embed_image: with `timed`, also the seconds spent here."""
        return await embed_timed(self._embed_image(image), timed)

    @traced("multiplexed.embed_images")
    @prioritized
    @serving
    async def embed_images(
        self, images: list[EncoderImage], timed: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """As ClipEncoder.embed_images."""
        return await embed_timed(embed_each(self._embed_image, images), timed)

    async def _embed_image(self, image: EncoderImage) -> np.ndarray:
        loaded = await self._model()
        received, key = await self.inputs.receive(image, keyed=self.cache.config.enabled)
        key = _model_key(loaded.model_id) + key  # the same image, per model

        async def compute() -> np.ndarray:
            pixels = await self.inputs.model_input(received, loaded.model)
            return await self._batch_image(classed(pixels))

        return await cached_embedding(self.cache, key, "image", compute)

    @traced("multiplexed.embed_text")
    @prioritized
    @serving
    async def embed_text(self, text: str) -> np.ndarray:
        return await self._embed_text(text)

    async def _embed_text(self, text: str) -> np.ndarray:
        return (await self._embed_texts([text], False))[0]

    @traced("multiplexed.embed_pair")
    @prioritized
    @serving
    async def embed_pair(
        self, image: EncoderImage, text: str, timed: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | tuple[tuple[np.ndarray, np.ndarray], float]:
        """As ClipEncoder.embed_pair."""
        pair = embed_both(self._embed_image(image), self._embed_text(text))
        return await embed_timed(pair, timed)

    @traced("multiplexed.embed_texts")
    @prioritized
    @serving
    async def embed_texts(
        self, texts: list[str], count_tokens: bool = False
    ) -> np.ndarray | tuple[np.ndarray, list[int]]:
        """As ClipEncoder.embed_texts, with the requested model's own tokenizer."""
        return await self._embed_texts(texts, count_tokens)

    async def _embed_texts(
        self, texts: list[str], count_tokens: bool
    ) -> np.ndarray | tuple[np.ndarray, list[int]]:
        loaded = await self._model()

        async def embed_one(text: str, tokens: TextTokens) -> np.ndarray:
            key = _model_key(loaded.model_id) + text_key(text)
            return await cached_embedding(
                self.cache, key, "text", lambda: self._batch_text(classed(tokens))
            )

        return await embed_tokenized(loaded.model, texts, count_tokens, embed_one)

    async def _batch_image(self, pixels: torch.Tensor) -> np.ndarray:
        (vector,) = await self._forward_images([pixels])
        return vector

    async def _batch_text(self, tokens: TextTokens) -> np.ndarray:
        (vector,) = await self._forward_texts([tokens])
        return vector

    async def _forward_images(self, pixel_batch: list[torch.Tensor]) -> list[np.ndarray]:
        loaded = await self._model(count=False)  # Serve's batches hold one model id each
        forward = self.guard.watch(loaded.model.encode_images)
        return await self.scheduler.run("image", pixel_batch, loaded.model_id, forward)

    async def _forward_texts(self, tokens: list[TextTokens]) -> list[np.ndarray]:
        loaded = await self._model(count=False)
        forward = self.guard.watch(loaded.model.encode_tokens)
        return await self.scheduler.run("text", tokens, loaded.model_id, forward)

    def _count_batch(self, kind: str, size: int, seconds: float) -> None:
        metrics.record_batch(kind, size)
        metrics.record_stage("encode", seconds)

    async def space(self) -> dict:
        """The requested model's space (see ImageEncoder.space)."""
        model = (await self._model(count=False)).model
        return await asyncio.to_thread(stamp, model)  # a custom loader may not have stamped it

    async def scoring(self) -> dict:
        """The requested model's score semantics (activation, logit_scale, logit_bias)."""
        return (await self._model(count=False)).model.semantics.as_dict()

    async def describe(self) -> dict[str, Any]:
        """The replica's pool: resident models (LRU first), loads, hits, evictions, failures."""
        return {
            **self.pool.describe(self._lru_models()),
            "family": "clip",
            "multiplexed": True,
            "profile": self.pool.profile,
            # local checkpoints always load their weights; hub ids get random ones in that mode
            "random_weights": self.random_weights and bool(self.pool.catalog.spec.allowed_hub_ids),
            "device": self.plan.name,
            "replica_id": self.replica_id,
            "ready": True,
            "config": self.config.model_dump(),
            "idle_ttl_s": self.idle_ttl_s,
            "pending": self.scheduler.pending(),
            "priority": priority_view(self.scheduler, self.inputs),
            "stall": stall_view(self.guard, self.config),
            "cache": self.cache.stats(),
            "process": process_resources(self.plan.name),
        }


def _model_key(model_id: str) -> bytes:
    return b"m" + model_id.encode() + b"\x00"

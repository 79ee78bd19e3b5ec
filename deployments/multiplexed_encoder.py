"""Multiplexed CLIP encoder: one deployment serving many models of one backend, by id.

Ray fixes `max_num_models_per_replica` when `@serve.multiplexed` decorates the loader, so the
class is built per profile at bind time (`multiplexed_encoder(spec)`). Requests carry the id
as the handle's `multiplexed_model_id`; Serve routes them to replicas that already hold it and
`@serve.batch` keeps different ids in different batches. Validation and loading live in
clipfleet.multiplex (no bad id or failing checkpoint ever evicts a loaded model).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve.deployment import Deployment

from clipfleet.batching import ForwardScheduler
from clipfleet.cache import EmbeddingCache, image_key, text_key
from clipfleet.config import MultiplexedProfileSpec, random_weights_enabled
from clipfleet.errors import InvalidRequestError
from clipfleet.models.clip import load_clip_model
from clipfleet.multiplex import LoadedModel, ModelCatalog, ModelPool, ResolvedModel
from clipfleet.observability import metrics
from clipfleet.observability.resources import process_resources
from clipfleet.observability.tracing import traced
from deployments._encoder import (
    DEFAULT_CONFIG,
    apply_encoder_config,
    cached_embedding,
    mergeable_batch,
    prepare_replica,
)

_RAY_WRAPPER_ATTR = "__serve_multiplex_wrapper"  # where @serve.multiplexed keeps its LRU


class MultiplexedClipEncoderBase:
    """Everything but the loader, whose decoration depends on the profile's LRU size."""

    def __init__(self, profile: str, spec: MultiplexedProfileSpec) -> None:
        self.plan = prepare_replica()
        self.pool = ModelPool(ModelCatalog(profile, spec), self._build)
        self.config = DEFAULT_CONFIG
        self.cache = EmbeddingCache(self.config.cache)
        self.scheduler = ForwardScheduler({}, self.config.max_batch_size, self._count_batch)
        process_resources()

    def _build(self, resolved: ResolvedModel) -> Any:
        model = load_clip_model(resolved.spec, self.plan, resolved.random_weights)
        model.warmup()
        return model

    async def _lru_get(self, model_id: str) -> LoadedModel:
        raise NotImplementedError  # the @serve.multiplexed loader of the built class

    def _lru_models(self) -> dict[str, LoadedModel]:
        wrapper = getattr(self, _RAY_WRAPPER_ATTR, None)
        return dict(wrapper.models) if wrapper is not None else {}

    async def _model(self, count: bool = True) -> LoadedModel:
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            raise InvalidRequestError("name a model as <profile>:<model-id>", "model", status=422)
        return await self.pool.get(model_id, self._lru_get, self._lru_models, count=count)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """user_config: EncoderConfig (batching, cache); unknown keys are rejected."""
        apply_encoder_config(self, user_config, [self._image_batch, self._text_batch])

    @traced("multiplexed.embed_image")
    async def embed_image(
        self, image: np.ndarray, timed: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """As ClipEncoder.embed_image: with `timed`, also the seconds spent here."""
        started = time.perf_counter()
        vector = await self._embed_image(image)
        return (vector, time.perf_counter() - started) if timed else vector

    async def _embed_image(self, image: np.ndarray) -> np.ndarray:
        loaded = await self._model()
        key = _model_key(loaded.model_id) + image_key(image)  # the same image, per model

        async def compute() -> np.ndarray:
            with metrics.timed_stage("preprocess"):
                pixels = await asyncio.to_thread(loaded.model.preprocess_image, image)
            return await self._image_batch(pixels)

        return await cached_embedding(self.cache, key, "image", compute)

    @traced("multiplexed.embed_text")
    async def embed_text(self, text: str) -> np.ndarray:
        loaded = await self._model()
        return await self._embed_one_text(loaded.model_id, text)

    @traced("multiplexed.embed_texts")
    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        loaded = await self._model()
        vectors = [self._embed_one_text(loaded.model_id, text) for text in texts]
        return np.stack(await asyncio.gather(*vectors))

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text with this model's own tokenizer: usage figures."""
        loaded = await self._model(count=False)
        return await asyncio.to_thread(loaded.model.count_tokens, texts)

    async def _embed_one_text(self, model_id: str, text: str) -> np.ndarray:
        key = _model_key(model_id) + text_key(text)
        return await cached_embedding(self.cache, key, "text", lambda: self._text_batch(text))

    @mergeable_batch
    async def _image_batch(self, pixel_batch: list[torch.Tensor]) -> list[np.ndarray]:
        loaded = await self._model(count=False)  # Serve's batches hold one model id each
        forward = loaded.model.encode_images
        return await self.scheduler.run("image", pixel_batch, loaded.model_id, forward)

    @mergeable_batch
    async def _text_batch(self, texts: list[str]) -> list[np.ndarray]:
        loaded = await self._model(count=False)
        return await self.scheduler.run("text", texts, loaded.model_id, loaded.model.encode_texts)

    def _count_batch(self, kind: str, size: int, seconds: float) -> None:
        metrics.record_batch(kind, size)
        metrics.record_stage("encode", seconds)

    async def scoring(self) -> dict:
        """The requested model's score semantics (activation, logit_scale, logit_bias)."""
        return (await self._model(count=False)).model.semantics.as_dict()

    async def describe(self) -> dict[str, Any]:
        """The replica's pool: resident models (LRU first), loads, hits, evictions, failures."""
        context = serve.get_replica_context()
        return {
            **self.pool.describe(self._lru_models()),
            "family": "clip",
            "multiplexed": True,
            "profile": self.pool.profile,
            # local checkpoints always load their weights; hub ids get random ones in that mode
            "random_weights": random_weights_enabled()
            and bool(self.pool.catalog.spec.allowed_hub_ids),
            "device": self.plan.name,
            "replica_id": context.replica_id.unique_id,
            "ready": True,
            "config": self.config.model_dump(),
            "pending": self.scheduler.pending(),
            "cache": self.cache.stats(),
            "process": process_resources(self.plan.name),
        }


def _model_key(model_id: str) -> bytes:
    return b"m" + model_id.encode() + b"\x00"


def multiplexed_encoder(spec: MultiplexedProfileSpec) -> Deployment:
    """The deployment for one multiplexed profile, its LRU sized from the spec."""

    class MultiplexedClipEncoder(MultiplexedClipEncoderBase):
        @serve.multiplexed(max_num_models_per_replica=spec.max_models_per_replica)
        async def _lru_get(self, model_id: str) -> LoadedModel:
            return await self.pool.take(model_id)

    return serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)(
        MultiplexedClipEncoder
    )

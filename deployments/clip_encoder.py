"""CLIP encoder deployment: one per profile/variant, batched image and text encoding."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from clipfleet.cache import text_key
from clipfleet.config import ClipModelSpec, random_weights_enabled
from clipfleet.models.clip import load_clip_model
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.observability.tracing import traced
from deployments._encoder import (
    DEFAULT_CONFIG,
    BatchedImageEncoder,
    cached_embedding,
    mergeable_batch,
    prepare_replica,
)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class ClipEncoder(BatchedImageEncoder):
    def __init__(self, spec: ClipModelSpec) -> None:
        model = load_clip_model(spec, prepare_replica(), random_weights_enabled())
        self.model = apply_runtime(model, spec)
        self.config = DEFAULT_CONFIG
        self._init_stats()

    def _forwards(self) -> dict:
        return {**super()._forwards(), "text": self.model.encode_texts}

    def _batched_methods(self) -> list:
        return [self._image_batch, self._text_batch]

    @traced("encoder.embed_text")
    async def embed_text(self, text: str) -> np.ndarray:
        await self._inject_faults()
        return await self._embed_one_text(text)

    @traced("encoder.embed_texts")
    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) for N texts; each text joins the shared batch queue with other requests'."""
        await self._inject_faults()
        return np.stack(await asyncio.gather(*(self._embed_one_text(text) for text in texts)))

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text (start/end included, truncated to the context): usage figures."""
        return await asyncio.to_thread(self.model.count_tokens, texts)

    async def _embed_one_text(self, text: str) -> np.ndarray:
        return await cached_embedding(
            self.cache, text_key(text), "text", lambda: self._text_batch(text)
        )

    @mergeable_batch
    async def _text_batch(self, texts: list[str]) -> list[np.ndarray]:
        return await self.scheduler.run("text", texts)

    async def describe(self) -> dict:
        return {
            **(await super().describe()),
            "logit_scale": self.model.logit_scale,
            "semantics": self.model.semantics.as_dict(),
        }

"""A CLIP encoder replica without Ray: the image paths of ImageEncoder plus batched texts."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from clipfleet.cache import text_key
from clipfleet.config import ClipModelSpec
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import DevicePlan
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.sizing import ForwardLease
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.encoder import ImageEncoder, cached_embedding, inject_faults
from clipfleet.replicas.serving import serving


class ClipEncoder(ImageEncoder):
    """`_batch_text(text)` is the per-item text hook, as `_batch_image` is for images."""

    def __init__(
        self,
        spec: ClipModelSpec,
        plan: DevicePlan,
        random_weights: bool = False,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
    ) -> None:
        model = apply_runtime(load_clip_model(spec, plan, random_weights), spec)
        super().__init__(model, replica_id, lease)

    def _forwards(self) -> dict:
        return {**super()._forwards(), "text": self.model.encode_texts}

    @traced("encoder.embed_text")
    @serving
    async def embed_text(self, text: str) -> np.ndarray:
        await inject_faults(self.config)
        return await self._embed_one_text(text)

    @traced("encoder.embed_texts")
    @serving
    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) for N texts; each text joins the shared batch queue with other requests'."""
        await inject_faults(self.config)
        return np.stack(await asyncio.gather(*(self._embed_one_text(text) for text in texts)))

    @serving
    async def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text (start/end included, truncated to the context): usage figures."""
        return await asyncio.to_thread(self.model.count_tokens, texts)

    async def _embed_one_text(self, text: str) -> np.ndarray:
        return await cached_embedding(
            self.cache, text_key(text), "text", lambda: self._batch_text(text)
        )

    async def _batch_text(self, text: str) -> np.ndarray:
        (vector,) = await self._forward_texts([text])
        return vector

    async def _forward_texts(self, texts: list[str]) -> list[np.ndarray]:
        return await self.scheduler.run("text", texts)

    async def describe(self) -> dict[str, Any]:
        return {
            **(await super().describe()),
            "logit_scale": self.model.logit_scale,
            "semantics": self.model.semantics.as_dict(),
        }

"""A CLIP encoder replica without Ray: the image paths of ImageEncoder plus batched texts."""

from __future__ import annotations

from typing import Any

import numpy as np

from clipfleet.config import ClipModelSpec, FetchLimits
from clipfleet.ingress.priority import classed, prioritized
from clipfleet.models.base import TextTokens
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import DevicePlan
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.sizing import ForwardLease
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.cache import text_key
from clipfleet.replicas.encoder import (
    ImageEncoder,
    cached_embedding,
    embed_both,
    embed_timed,
    embed_tokenized,
    inject_faults,
)
from clipfleet.replicas.images import EncoderImage
from clipfleet.replicas.serving import serving


class ClipEncoder(ImageEncoder):
    """`_batch_text(tokens)` is the per-item text hook, as `_batch_image` is for images."""

    def __init__(
        self,
        spec: ClipModelSpec,
        plan: DevicePlan,
        random_weights: bool = False,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
        limits: FetchLimits | None = None,
    ) -> None:
        model = apply_runtime(load_clip_model(spec, plan, random_weights), spec)
        super().__init__(model, replica_id, lease, limits)

    def _forwards(self) -> dict:
        return {**super()._forwards(), "text": self.model.encode_tokens}

    @traced("encoder.embed_text")
    @prioritized
    @serving
    async def embed_text(self, text: str, route_key: bytes | None = None) -> np.ndarray:
        """`route_key`: for the content-affinity router (clipfleet.ingress.affinity), unused
        here."""
        await inject_faults(self.config)
        return await self._text_vector(text)

    async def _text_vector(self, text: str) -> np.ndarray:
        return (await embed_tokenized(self.model, [text], False, self._embed_one_text))[0]

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
        """(N, D) for N texts, each tokenized once (cut to what the tokenizer can use) and
        joining the shared batch queue with other requests'; with `count_tokens`, also the
        tokens per text (start/end included, truncated to the context): usage figures.
        `route_key`: for the content-affinity router (clipfleet.ingress.affinity), unused here."""
        await inject_faults(self.config)
        return await embed_tokenized(self.model, texts, count_tokens, self._embed_one_text)

    async def _embed_one_text(self, text: str, tokens: TextTokens) -> np.ndarray:
        return await cached_embedding(
            self.cache, text_key(text), "text", lambda: self._batch_text(classed(tokens))
        )

    async def _batch_text(self, tokens: TextTokens) -> np.ndarray:
        (vector,) = await self._forward_texts([tokens])
        return vector

    async def _forward_texts(self, tokens: list[TextTokens]) -> list[np.ndarray]:
        return await self.scheduler.run("text", tokens)

    async def describe(self) -> dict[str, Any]:
        return {
            **(await super().describe()),
            "logit_scale": self.model.logit_scale,
            "semantics": self.model.semantics.as_dict(),
        }

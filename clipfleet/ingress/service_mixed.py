"""Operations over mixed texts and images on one variant: the peers' request shapes (vLLM
`messages` and content parts, NV-CLIP mixed input, Cohere `inputs`, rerank and vLLM score).

A mixin of ClipfleetService: each operation routes once, so every vector of a request comes
from one variant (one embedding space), and embeds through the service's own calls (the texts
in one `embed_texts` call, the images as /v1/embed/* sends them: clipfleet.ingress.service_images).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipfleet.errors import ClipfleetError, find_clipfleet_error
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.fanout import Judged
from clipfleet.ingress.targets import Profile, Routing
from clipfleet.models.embedding_space import VectorSpace
from clipfleet.scoring import relevance_scores

_IMAGES = "__images"  # the field the image fan-out names; renamed to each item's own param


@dataclass(frozen=True)
class Item:
    """One text or one image of a request, with the request field it came from (`param`).
    `counted`: whether it counts against limits.max_items (a rerank query does not)."""

    param: str
    text: str | None = None
    image: ImageSource | None = None
    counted: bool = True

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise ValueError("an item is a text or an image")


def _renamed(exc: BaseException, params: Sequence[str]) -> BaseException:
    """An image's error, pointing at the request field the image came from."""
    error = find_clipfleet_error(exc)
    if error is None or not (error.param or "").startswith(_IMAGES + "["):
        return exc
    index = int(error.param.removeprefix(_IMAGES + "[").removesuffix("]"))
    return error.at_param(params[index])


class MixedOperations:
    async def vector_space(self, profile_name: str, variant: str, encoder: str = "clip"):
        """The served space of a profile's variant (or multiplexed model id, or ResNet): asked
        of its encoder once per variant. A multiplexed model id is asked every time: the model
        behind an id may be reloaded from a changed checkpoint."""
        key = (profile_name, variant, encoder)
        if key in self._spaces:
            return self._spaces[key]
        if encoder == "resnet":
            handle = self.profiles[profile_name].resnet
        elif profile_name in self.multiplexed:
            profile, _ = self.multiplexed_route(profile_name, Routing(model_id=variant))
            handle = profile.clip[variant]
        else:
            handle = self.profiles[profile_name].clip[variant]
        space = VectorSpace.of(await handle.space.remote(), self.args.fetch)
        if profile_name not in self.multiplexed:
            self._spaces[key] = space
        return space

    def _routed_items(
        self, items: Sequence[Item], profile_name: str | None, routing: Routing | None, field: str
    ) -> tuple[Profile, str]:
        """The limits (item count, each text's length, all texts' characters) checked before
        any work, then the route."""
        self.check_count(sum(item.counted for item in items), field)
        texts = [item for item in items if item.text is not None]
        for item in texts:
            try:
                self.check_texts([item.text], field)
            except ClipfleetError as exc:
                raise exc.at_param(item.param) from None
        self.check_texts([item.text for item in texts], field)  # the request's prompt budget
        return self.route(profile_name, routing)

    async def _item_vectors(
        self,
        clip: Any,
        key: tuple[str, str],
        items: Sequence[Item],
        judged: Judged,
        count_tokens: bool,
    ) -> tuple[list[np.ndarray], list[int]]:
        """Each item's vector, in order: the texts in one call beside the images' fan-out."""
        text_at = [index for index, item in enumerate(items) if item.text is not None]
        image_at = [index for index, item in enumerate(items) if item.image is not None]
        texts = None
        if text_at:
            wanted = [items[index].text for index in text_at]
            texts = asyncio.ensure_future(self._text_vectors(clip, wanted, count_tokens))
        try:
            sources = [items[index].image for index in image_at]
            images = (
                await self._image_vectors(clip, key, sources, judged, _IMAGES) if image_at else []
            )
        except Exception as exc:
            if texts is not None:
                texts.cancel()
            raise _renamed(exc, [items[index].param for index in image_at]) from exc
        text_vectors, counts = await texts if texts is not None else ([], [])
        vectors: list[Any] = [None] * len(items)
        token_counts = [0] * len(items)
        for position, index in enumerate(image_at):
            vectors[index] = images[position]
        for position, index in enumerate(text_at):
            vectors[index] = text_vectors[position]
            token_counts[index] = counts[position] if count_tokens else 0
        return vectors, token_counts

    async def embed_items(
        self,
        items: Sequence[Item],
        profile_name: str | None,
        routing: Routing | None = None,
        field: str = "input",
        count_tokens: bool = False,
    ) -> dict:
        """One vector per item, all from one variant; `space` is its VectorSpace."""
        profile, variant = self._routed_items(items, profile_name, routing, field)
        clip = profile.clip[variant]
        async with self._observed(profile, variant, routing) as judged:
            key = (profile.name, variant)
            vectors, token_counts = await self._item_vectors(clip, key, items, judged, count_tokens)
        body = {
            "embeddings": vectors,
            "token_counts": token_counts,
            "dim": int(vectors[0].shape[-1]),
            "encoder": "clip",
            "space": await self.vector_space(profile.name, variant),
        }
        return self._served(profile, variant, profile.clip_labels[variant], **body)

    async def relevance(
        self,
        left: Sequence[Item],
        right: Sequence[Item],
        pairs: Sequence[tuple[int, int]],
        profile_name: str | None,
        routing: Routing | None = None,
        field: str = "documents",
    ) -> dict:
        """The model's own score of each (left[i], right[j]) pair (clipfleet.scoring's
        relevance_scores: the /v1/score maths), every item embedded once, on one variant."""
        items = [*left, *right]
        profile, variant = self._routed_items(items, profile_name, routing, field)
        clip = profile.clip[variant]
        async with self._observed(profile, variant, routing) as judged:
            semantics = await self.semantics(profile, variant)
            key = (profile.name, variant)
            vectors, token_counts = await self._item_vectors(clip, key, items, judged, True)
        first = np.stack([vectors[i] for i, _ in pairs])
        second = np.stack([vectors[len(left) + j] for _, j in pairs])
        body = {
            "scores": relevance_scores(first, second, semantics),
            "activation": semantics.activation,
            "token_counts": token_counts,
            "space": await self.vector_space(profile.name, variant),
        }
        return self._served(profile, variant, profile.clip_labels[variant], **body)

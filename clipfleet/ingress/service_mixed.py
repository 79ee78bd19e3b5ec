"""Mixed texts and images on one variant: the peers' request shapes (vLLM `messages` and
content parts, NV-CLIP mixed input, Cohere `inputs`, rerank and vLLM score).

Plain functions the service's `embed_items` and `relevance` compose: every vector of a request
comes from one target (one embedding space); the texts go in one `embed_texts` call, the images
as /v1/embed/* sends them (clipfleet.ingress.service_images), each failure naming the request
field its item came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipfleet.api.limits import check_count, check_text, check_texts
from clipfleet.config import ApiLimits
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.fanout import Judged
from clipfleet.ingress.service_images import RequestImages

TextVectors = Callable[[Any, Sequence[str], bool], Awaitable[tuple[np.ndarray, list[int] | None]]]


@dataclass(frozen=True)
class MixedItem:
    """One text or one image of a request, with the request field it came from (`param`).
    `counted`: whether it counts against limits.max_items (a rerank query does not)."""

    param: str
    text: str | None = None
    image: ImageSource | None = None
    counted: bool = True

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise ValueError("an item is a text or an image")


def check_items(items: Sequence[MixedItem], field: str, limits: ApiLimits) -> None:
    """The limits (item count, each text's length, all texts' characters), before any work;
    a text over its own limit is named by its field."""
    check_count(sum(item.counted for item in items), field, limits)
    texts = [item for item in items if item.text is not None]
    for item in texts:
        check_text(item.text, item.param, limits)
    check_texts([item.text for item in texts], field, limits)  # the request's prompt budget


async def item_vectors(
    images: RequestImages,
    text_vectors: TextVectors,
    clip: Any,
    key: tuple[str, str],
    items: Sequence[MixedItem],
    judged: Judged,
    count_tokens: bool,
) -> tuple[np.ndarray, list[int]]:
    """Each item's vector (one row each, in order) and token count: the texts in one call
    beside the images' fan-out."""
    text_at = [index for index, item in enumerate(items) if item.text is not None]
    image_at = [index for index, item in enumerate(items) if item.image is not None]
    texts = None
    if text_at:
        wanted = [items[index].text for index in text_at]
        texts = asyncio.ensure_future(text_vectors(clip, wanted, count_tokens))
    try:
        if image_at:
            sources = [items[index].image for index in image_at]
            params = [items[index].param for index in image_at]
            image_vectors = await images.vectors(clip, key, sources, judged, params)
    except BaseException:
        if texts is not None:
            texts.cancel()
        raise
    text_vectors_, counts = await texts if texts is not None else (None, None)
    first = image_vectors if image_at else text_vectors_
    vectors = np.empty((len(items), first.shape[1]), dtype=first.dtype)
    token_counts = [0] * len(items)
    if image_at:
        vectors[image_at] = image_vectors
    if text_at:
        vectors[text_at] = text_vectors_
        for position, index in enumerate(text_at):
            token_counts[index] = counts[position] if count_tokens else 0
    return vectors, token_counts

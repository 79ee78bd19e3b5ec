"""How the service gets images to an encoder: `RequestImages`, a component of ClipfleetService.

Inline images (base64, uploads) go to the encoder as they came, and it decodes them itself, at
its model's input square; a request's inline images travel in one call (`embed_images`). Image
URLs go through the ImageFetcher, which decodes them to that square too (the encoder's
`input_geometry`, asked once per encoder from `describe`), one fetch and one encoder call each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipfleet.errors import find_clipfleet_error
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.fanout import Judged, gather_items
from clipfleet.ingress.fanout import once_more_if_replica_lost as again
from clipfleet.models.catalog import MultiplexedProfiles
from clipfleet.models.geometry import InputGeometry

Key = tuple[str, str]  # (profile, variant) of a CLIP encoder; ("", label) of a ResNet


@dataclass
class RequestImages:
    fetcher: Any  # DeploymentHandle of the ImageFetcher
    multiplexed: MultiplexedProfiles
    geometries: dict[Key, InputGeometry | None] = field(default_factory=dict)

    async def input_geometry(self, key: Key, encoder: Any) -> InputGeometry | None:
        """The square `encoder`'s model keeps (what the fetcher decodes its URL images to):
        fixed per loaded model, asked once per encoder; None for multiplexed models (one
        encoder, many models) and models without one."""
        if key not in self.geometries:
            if key[0] in self.multiplexed:
                self.geometries[key] = None
            else:
                answer = (await encoder.describe.remote()).get("input_geometry")
                self.geometries[key] = InputGeometry(**answer) if answer else None
        return self.geometries[key]

    async def image_input(self, source: ImageSource, key: Key, encoder: Any):
        """What `encoder` is sent for `source`: an inline image as it came, decoded by the
        encoder itself; for a URL, the fetcher's response, decoded there at the same size."""
        if source.inline:
            return source
        return self.fetcher.fetch.remote(source, await self.input_geometry(key, encoder))

    async def vectors(
        self,
        encoder: Any,
        key: Key,
        sources: Sequence[ImageSource],
        judged: Judged | None = None,
        params: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Each source's vector, one row each; a failure names its item: `params[i]` where the
        images came from fields of their own (mixed items), else `images[i]`. `judged` gets
        the encoder-reported seconds (what the canary guard judges)."""
        timed = judged is not None
        if all(source.inline for source in sources):
            try:
                answer = await again(
                    lambda: encoder.embed_images.remote(list(sources), timed=timed)
                )
            except Exception as exc:
                _raise_at(exc, params)
            matrix, seconds = answer if timed else (answer, None)
        else:

            async def embed(source: ImageSource):
                image = await self.image_input(source, key, encoder)
                return await encoder.embed_image.remote(image, timed=timed)

            responses = [again(lambda s=source: embed(s)) for source in sources]
            answers = await gather_items(responses, "images", params)
            matrix = np.stack([answer[0] for answer in answers] if timed else answers)
            seconds = max((answer[1] for answer in answers), default=None) if timed else None
        if judged is not None and seconds is not None:
            judged.add(seconds)
        return np.asarray(matrix)

    async def beside(self, clip: Any, key: Key, source: ImageSource, other: Any, judged: Judged):
        """The image's vector, timed by its encoder (what the canary guard judges), while
        `other` (the text side, already sent) runs beside it; `other` is cancelled if the image
        fails, so a failed request stops using encoder capacity."""
        try:
            image_input = await self.image_input(source, key, clip)
            image_vector, seconds = await clip.embed_image.remote(image_input, timed=True)
        except BaseException:
            other.cancel()
            raise
        judged.add(seconds)
        return image_vector


def _raise_at(exc: Exception, params: Sequence[str] | None):
    """The encoder names a failing inline image by its place in the call, `images[i]`: the
    request field it came from is `params[i]` (known here, not on the encoder)."""
    error = find_clipfleet_error(exc)
    place = (error.param or "") if error is not None else ""
    if params is None or not place.startswith("images["):
        raise exc
    raise error.at_param(params[int(place.removeprefix("images[").removesuffix("]"))]) from exc

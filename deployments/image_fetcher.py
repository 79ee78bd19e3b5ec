"""Image fetching deployment: URL / base64 / upload -> small RGB uint8 array."""

from __future__ import annotations

import numpy as np
from ray import serve

from clipfleet.config import FetchLimits
from clipfleet.fetch import ImageFetcher as PlainImageFetcher
from clipfleet.fetch import ImageSource


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
class ImageFetcher:
    def __init__(self, limits: FetchLimits) -> None:
        self._fetcher = PlainImageFetcher(limits)

    async def fetch(self, source: ImageSource) -> np.ndarray:
        return await self._fetcher.load(source)

    def describe(self) -> dict:
        return {"ready": True, "replica_id": serve.get_replica_context().replica_id.unique_id}

    async def __del__(self) -> None:
        await self._fetcher.close()

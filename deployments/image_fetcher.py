"""Image fetching deployment: URL / base64 / upload -> small RGB uint8 array."""

from __future__ import annotations

from ray import serve

from clipfleet.config import FetchLimits
from clipfleet.replicas.fetcher import Fetcher
from deployments._context import replica_id


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
class ImageFetcher(Fetcher):
    def __init__(self, limits: FetchLimits) -> None:
        super().__init__(limits, replica_id())

    async def __del__(self) -> None:
        await self.close()

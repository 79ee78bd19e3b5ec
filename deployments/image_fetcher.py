"""Image fetching deployment: URL / base64 / upload -> small RGB uint8 array."""

from __future__ import annotations

import os
import resource

import numpy as np
import psutil
from ray import serve

from clipfleet.config import FetchLimits
from clipfleet.fetch import ImageFetcher as PlainImageFetcher
from clipfleet.fetch import ImageSource
from clipfleet.gpu_decode import EncodedJpeg, jpeg_for_device
from clipfleet.observability import metrics
from clipfleet.observability.tracing import traced


def source_kind(source: ImageSource) -> str:
    return "url" if source.url is not None else "base64" if source.base64 is not None else "upload"


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
class ImageFetcher:
    def __init__(self, limits: FetchLimits) -> None:
        self._fetcher = PlainImageFetcher(limits)

    @traced("ImageFetcher.fetch")
    async def fetch(self, source: ImageSource) -> np.ndarray | EncodedJpeg:
        """PlainImageFetcher.load, in its two stages, each timed and its failures counted.
        With `gpu_decode`, a JPEG within the limits is shipped undecoded (EncodedJpeg)."""
        with metrics.counting_failures("fetch"), metrics.timed_stage("fetch"):
            data = await self._fetcher.read_bytes(source)
        if self._fetcher.limits.gpu_decode:
            jpeg = jpeg_for_device(data, self._fetcher.limits)
            if jpeg is not None:
                metrics.record_image(source_kind(source), len(data), jpeg.width * jpeg.height)
                return jpeg
        with metrics.counting_failures("decode"), metrics.timed_stage("decode"):
            image = await self._fetcher.decode(data)
        metrics.record_image(source_kind(source), len(data), image.shape[0] * image.shape[1])
        return image

    async def memory(self) -> dict:
        """This replica's process: pid, resident memory now and at its peak, decode budget."""
        budget = self._fetcher.decode_budget
        return {
            "pid": os.getpid(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "decode_budget_bytes": budget.capacity,
            "decode_bytes_in_use": budget.in_use,
        }

    def describe(self) -> dict:
        return {"ready": True, "replica_id": serve.get_replica_context().replica_id.unique_id}

    async def __del__(self) -> None:
        await self._fetcher.close()

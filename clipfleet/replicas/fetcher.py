"""The image fetcher replica without Ray: clipfleet.images.fetch.UrlFetcher's two stages, each
timed and its failures counted, and the process's memory figures."""

from __future__ import annotations

import os
import resource

import numpy as np
import psutil

from clipfleet.config import FetchLimits
from clipfleet.images.fetch import ImageSource, UrlFetcher
from clipfleet.images.gpu_decode import EncodedJpeg, jpeg_for_device
from clipfleet.ingress.priority import prioritized
from clipfleet.models.geometry import InputGeometry
from clipfleet.observability import metrics
from clipfleet.observability.tracing import traced
from clipfleet.replicas import LOCAL_REPLICA


def source_kind(source: ImageSource) -> str:
    return "url" if source.url is not None else "base64" if source.base64 is not None else "upload"


class Fetcher:
    def __init__(self, limits: FetchLimits, replica_id: str = LOCAL_REPLICA) -> None:
        self._fetcher = UrlFetcher(limits)
        self.replica_id = replica_id
        self._shaped: dict[InputGeometry, FetchLimits] = {}

    @prioritized
    @traced("ImageFetcher.fetch")
    async def fetch(
        self, source: ImageSource, geometry: InputGeometry | None = None
    ) -> np.ndarray | EncodedJpeg:
        """UrlFetcher.load, in its two stages, each timed and its failures counted.
        `geometry`: the square the receiving encoder's model keeps (clipfleet.models.geometry),
        decoded straight to it; None: the generic `ship_*` size. With `gpu_decode`, a JPEG
        within the limits is shipped undecoded (EncodedJpeg). A bulk request's decode waits
        behind interactive ones for a decode thread (clipfleet.images.decode_pool)."""
        with metrics.counting_failures("fetch"), metrics.timed_stage("fetch"):
            data = await self._fetcher.read_bytes(source)
        if self._fetcher.limits.gpu_decode:
            jpeg = jpeg_for_device(data, self._fetcher.limits)
            if jpeg is not None:
                metrics.record_image(source_kind(source), len(data), jpeg.width * jpeg.height)
                return jpeg
        with metrics.counting_failures("decode"), metrics.timed_stage("decode"):
            image = await self._fetcher.decoder.decode(data, self._limits_for(geometry))
        metrics.record_image(source_kind(source), len(data), image.shape[0] * image.shape[1])
        return image

    def _limits_for(self, geometry: InputGeometry | None) -> FetchLimits:
        limits = self._fetcher.limits
        if geometry is None:
            return limits
        if geometry not in self._shaped:
            self._shaped[geometry] = geometry.limits(limits)
        return self._shaped[geometry]

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
        return {"ready": True, "replica_id": self.replica_id}

    async def close(self) -> None:
        await self._fetcher.close()

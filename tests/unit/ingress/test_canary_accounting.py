"""What the canary guard counts: unpinned requests only, failures only where the variant's own
replica marked them, latency as the encoder reports it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clipfleet.config import AppArgs, ClipModelSpec, ProfileSpec, ResNetSpec
from clipfleet.errors import (
    ForbiddenUrlError,
    InvalidRequestError,
    InvalidUrlError,
    ModelServingError,
    PayloadTooLargeError,
    ReplicaStalledError,
    RequestTimeoutError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.targets import Routing
from clipfleet.rollout.traffic import RollbackPolicy, TrafficConfig
from tests.support.handles import LocalHandle


class Encoder:
    """Answers `embed_image(timed=True)` claiming ENCODER_S; texts fail on the canary, as the
    real encoder marks a failure of its own (clipfleet/replicas/serving.py)."""

    def __init__(self, failing: bool) -> None:
        self.failing = failing

    def embed_image(self, image, timed=False):
        return np.ones(4), ENCODER_S

    def embed_texts(self, texts):
        if self.failing:
            raise ModelServingError("RuntimeError in embed_texts: broken canary")
        return np.ones((len(texts), 4))

    def describe(self):
        return {"input_geometry": None}


class SlowFetcher:
    """The client's image URL drips slowly: the ingress sees a long request."""

    async def fetch(self, source, geometry=None):
        await asyncio.sleep(DOWNLOAD_S)
        return np.zeros((8, 8, 3), np.uint8)


ENCODER_S, DOWNLOAD_S = 0.02, 0.3


@pytest.fixture
def service() -> ClipfleetService:
    spec = ClipModelSpec(model="local-dir:/nowhere")
    profile = ProfileSpec(
        variants={"stable": spec, "canary": spec}, resnet=ResNetSpec(model="resnet18")
    )
    service = ClipfleetService(
        AppArgs(profiles={"fast": profile}),
        fetcher=LocalHandle(SlowFetcher()),
        scorer=None,
        clip_encoders={
            "fast": {"stable": LocalHandle(Encoder(False)), "canary": LocalHandle(Encoder(True))}
        },
        resnet_encoders={"fast": None},
    )
    clock = [2000.0]
    service.traffic._clock = lambda: clock[0]
    weights = {"fast": {"stable": 50, "canary": 50}}
    service.apply_traffic(TrafficConfig(weights=weights, rollback=RollbackPolicy(min_requests=5)))
    clock[0] += 1  # requests come after the bucket in which the weights' epoch began
    return service


def test_pinned_requests_never_count(service):
    async def scenario():
        for _ in range(20):
            with pytest.raises(ModelServingError):
                await service.embed_texts(["a cat"], None, Routing(variant="canary"))

    asyncio.run(scenario())
    assert service.traffic.sync() == []
    canary = service.traffic_view()["fast"]["canary"]
    assert canary["window_requests"] == 0 and not canary["rolled_back"]


def test_unpinned_failures_roll_back_and_latency_is_the_encoders(service):
    async def scenario():
        for _ in range(5):
            with pytest.raises(ModelServingError):
                await service.embed_texts(["a cat"], None, Routing(variant=None, key=None))
        await service.embed_images([ImageSource(url="http://x/slow.jpg")], "clip", None)

    service.traffic.choose = lambda profile, key=None, pinned=None: pinned or "canary"
    asyncio.run(scenario())
    service.traffic.sync()
    canary = service.traffic_view()["fast"]["canary"]
    assert canary["window_requests"] == 6 and canary["window_errors"] == 5
    assert canary["window_p95_s"] <= ENCODER_S * 1.25  # the encoder's seconds, one bucket
    assert canary["rolled_back"]


class FailingFetcher:
    """Every image fetch fails with `error`, as a fetcher (not the encoder) would raise it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def fetch(self, source, geometry=None):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        InvalidUrlError("the image url host is not a valid host name"),
        InvalidRequestError("give exactly one of `url` or `base64`"),
        ForbiddenUrlError("the image url host points to a private address"),
        PayloadTooLargeError("the image is larger than 20 MiB"),
        UpstreamError("the image url answered HTTP 404"),  # 502
        UpstreamTimeoutError("the image url did not answer within 10 s"),  # 504
        RequestTimeoutError("the request did not complete in time"),  # 504
        ServiceUnavailableError("the service is at capacity"),  # Serve's queues, 503
        UnicodeError("label empty or too long"),  # DNS of an invalid IDNA host: not marked
        KeyError("a bug in the fetcher"),  # a 500, but not the variant's
    ],
    ids=lambda error: type(error).__name__,
)
def test_failures_outside_the_variant_never_count(service, error):
    """4xx, 502, 504, Serve's 503 and any exception not marked by the variant's own replica
    leave its outcome alone, whatever the class."""
    service.fetcher = LocalHandle(FailingFetcher(error))
    service.traffic.choose = lambda profile, key=None, pinned=None: pinned or "canary"

    async def scenario():
        for _ in range(10):
            with pytest.raises(type(error)):
                await service.embed_images([ImageSource(url="http://x/a.jpg")], "clip", None)

    asyncio.run(scenario())
    service.traffic.sync()
    canary = service.traffic_view()["fast"]["canary"]
    assert canary["window_requests"] == 0 and canary["window_errors"] == 0
    assert not canary["rolled_back"]


def test_a_stalled_canary_replica_counts_against_it(service):
    """A stall is the variant's own failure: if sending the call once more fails too, it is
    counted (and the client gets the 503)."""

    def stalled(image, timed=False):
        raise ReplicaStalledError("hung")

    service.profiles["fast"].clip["canary"]._target.embed_image = stalled
    service.traffic.choose = lambda profile, key=None, pinned=None: pinned or "canary"

    async def scenario():
        for _ in range(5):
            with pytest.raises(ReplicaStalledError):
                await service.embed_images([ImageSource(url="http://x/a.jpg")], "clip", None)

    asyncio.run(scenario())
    service.traffic.sync()
    canary = service.traffic_view()["fast"]["canary"]
    assert canary["window_errors"] == 5 and canary["rolled_back"]

"""An inline image decoded inside an encoder replica is still the client's: a bad one gets the
same 4xx envelope it got from the fetcher and is never counted against the variant that
decoded it, on any route; the seconds its decode took are not the variant's latency. (Were
either blamed, any client could roll a canary back by sending broken base64 images.)"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from clipfleet.config import FetchLimits, MultiplexedProfileSpec, ResNetSpec
from clipfleet.errors import (
    ClipfleetError,
    ModelServingError,
    ServiceUnavailableError,
    is_variant_fault,
)
from clipfleet.images.fetch import ImageSource
from clipfleet.models.device import choose_device
from clipfleet.replicas.clip import ClipEncoder
from clipfleet.replicas.encoder import ResNetEncoder
from clipfleet.replicas.multiplexed import REQUESTED_MODEL, MultiplexedClipEncoder
from clipfleet.rollout.traffic import RollbackPolicy, TrafficConfig
from tests.support.hostile import hostile_corpus
from tests.support.images import image_bytes
from tests.support.local_dag import build_local_service, canary_app_args
from tests.support.tiny_models import make_open_clip_dir

LIMITS = FetchLimits(max_bytes=2_000_000)
CORPUS = hostile_corpus()
REFUSED = sorted(name for name, case in CORPUS.items() if case.status != 200)
GOOD = ImageSource(data=image_bytes(96, 80))
TOO_BIG = ImageSource(base64=base64.b64encode(b"\xff" * (LIMITS.max_bytes + 10)).decode())
NOT_BASE64 = ImageSource(base64="not base64 at all!")
# What the fetcher answered for the same bytes: (status, envelope type)
REFUSALS = {
    **{name: (CORPUS[name].status, CORPUS[name].error_type) for name in REFUSED},
    "too_big": (413, "payload_too_large"),
    "not_base64": (400, "invalid_request"),
}


def _source(name: str) -> ImageSource:
    special = {"too_big": TOO_BIG, "not_base64": NOT_BASE64}
    if name in special:
        return special[name]
    return ImageSource(base64=base64.b64encode(CORPUS[name].body).decode())


def _refused(call) -> ClipfleetError:
    with pytest.raises(ClipfleetError) as caught:
        asyncio.run(call)
    return caught.value


def _check(error: ClipfleetError, name: str, param: str | None) -> None:
    assert (error.status, error.type) == REFUSALS[name], error
    assert error.param == param
    assert not isinstance(error, ModelServingError) and not is_variant_fault(error)


@pytest.fixture(scope="module")
def limited_clip(clip_spec):
    """A plain CLIP encoder replica with the application's fetch limits (LIMITS)."""
    return ClipEncoder(clip_spec, choose_device("cpu"), limits=LIMITS)


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_an_encoders_decode_failure_is_the_clients_not_the_variants(limited_clip, name):
    """Every serving method that takes an inline image: the client's 4xx, unmarked."""
    clip, bad = limited_clip, _source(name)
    _check(_refused(clip.embed_image(bad, timed=True)), name, None)
    _check(_refused(clip.embed_images([GOOD, bad], timed=True)), name, "images[1]")
    _check(_refused(clip.embed_pair(bad, "a cat", timed=True)), name, None)


def test_resnet_and_multiplexed_encoders_do_not_blame_themselves_either(model_dir):
    cpu = choose_device("cpu")
    resnet = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    encoder = ResNetEncoder(resnet, cpu, limits=LIMITS)
    bad = _source("truncated_jpeg")
    _check(_refused(encoder.embed_images([GOOD, bad])), "truncated_jpeg", "images[1]")
    _check(_refused(encoder.embed_image(_source("too_big"))), "too_big", None)


def test_a_multiplexed_encoders_decode_failure_is_the_clients(mux_encoder):
    async def call(method, *args):
        REQUESTED_MODEL.set("alpha")
        return await method(*args)

    bad = _source("html")
    _check(_refused(call(mux_encoder.embed_images, [GOOD, bad])), "html", "images[1]")
    _check(_refused(call(mux_encoder.embed_pair, bad, "a cat")), "html", None)


def test_a_decode_budget_refusal_keeps_its_status_and_is_not_blamed(clip):
    """Whatever the decoder refuses with (a 503 with Retry-After when its budget sheds, a 413)
    reaches the client as it was raised, not as the variant's 500."""

    async def shedding(data, limits=None, then=None):
        raise ServiceUnavailableError("the decode budget is full", retry_after_s=2)

    clip.inputs.decoder.decode = shedding
    error = _refused(clip.embed_images([GOOD, GOOD], timed=True))
    assert isinstance(error, ServiceUnavailableError) and error.status == 503
    assert error.retry_after_s == 2 and not is_variant_fault(error)
    assert error.param == "images[0]"


def test_a_slow_inline_decode_is_not_the_variants_latency(clip):
    """The canary guard judges the seconds an encoder reports: an image that takes long to
    decode (or waits for the decode budget) must not make the variant look slow."""
    asyncio.run(clip.reconfigure({"cache": {"enabled": False}}))
    decode = clip.inputs.decoder.decode

    async def slow(data, limits=None, then=None):
        await asyncio.sleep(0.6)
        return await decode(data, limits, then)

    clip.inputs.decoder.decode = slow
    started = time.perf_counter()
    _, seconds = asyncio.run(clip.embed_image(GOOD, timed=True))
    assert time.perf_counter() - started >= 0.6
    assert seconds < 0.4
    _, seconds = asyncio.run(clip.embed_images([GOOD, GOOD, GOOD], timed=True))
    assert seconds < 0.4
    (_, _), seconds = asyncio.run(clip.embed_pair(GOOD, "a cat", timed=True))
    assert seconds < 0.4


# -- the canary guard's accounting, through every route that takes images ----------------------
def _data_url(name: str) -> str:
    return "data:image/png;base64," + base64.b64encode(CORPUS[name].body).decode()


def _requests(name: str) -> list[tuple[str, dict, str]]:
    """(path, body, the param the error must name) for the same bad image on each route."""
    b64 = base64.b64encode(CORPUS[name].body).decode()
    url = _data_url(name)
    good = "data:image/jpeg;base64," + base64.b64encode(GOOD.data).decode()
    return [
        ("/v1/embed/image", {"images": [{"base64": b64}]}, "images[0]"),
        (
            "/v1/embeddings",
            {"model": "fast", "modality": "image", "input": [good, url]},
            "input[1]",
        ),
        ("/v1/score", {"pairs": [{"image": {"base64": b64}, "text": "a cat"}]}, "pairs[0]"),
        ("/v1/tag", {"image": {"base64": b64}, "labels": ["a cat", "a dog"]}, "image"),
        (
            "/v1/rerank",
            {"model": "fast", "query": "a cat", "documents": [{"image": good}, {"image": url}]},
            "documents[1]",
        ),
        (
            "/v2/embed",
            {"model": "fast", "images": [url], "input_type": "image", "embedding_types": ["float"]},
            "images[0]",
        ),
    ]


@pytest.fixture
def canary(model_dir, client_for):
    """The tiny open_clip model as a stable and a canary variant, every request routed to the
    canary; the guard rolls it back after 5 failures the variant is blamed for."""
    service = build_local_service(canary_app_args(model_dir, fetch=LIMITS))
    clock = [2000.0]
    service.traffic._clock = lambda: clock[0]
    weights = {"fast": {"stable": 50, "canary": 50}}
    service.apply_traffic(TrafficConfig(weights=weights, rollback=RollbackPolicy(min_requests=5)))
    clock[0] += 1
    service.traffic.choose = lambda profile, key=None, pinned=None: pinned or "canary"
    return service, client_for(service)


def _canary_view(service) -> dict:
    service.traffic.sync()
    return service.traffic_view()["fast"]["canary"]


@pytest.mark.parametrize("name", ["truncated_jpeg", "over_limit_png", "html"])
def test_bad_inline_images_never_roll_a_canary_back(canary, name):
    service, client = canary
    status, error_type = REFUSALS[name]
    for _ in range(3):
        for path, body, param in _requests(name):
            response = client.post(path, json=body)
            assert response.status_code == status, (path, response.text)
            error = response.json()["error"]
            assert (error["type"], error["param"]) == (error_type, param), path
    view = _canary_view(service)
    assert view["window_errors"] == 0 and not view["rolled_back"]


def test_the_canary_guard_still_sees_a_broken_variant(canary):
    """The control: the same routes with good images and a canary whose forward fails roll it
    back, so the test above would see a blamed decode."""
    service, client = canary
    encoder = service.profiles["fast"].clip["canary"]._target

    async def broken(pixel_batch):
        raise RuntimeError("CUDA error: device-side assert")

    encoder._forward_images = broken
    body = {"images": [{"base64": base64.b64encode(GOOD.data).decode()}]}
    for _ in range(5):
        assert client.post("/v1/embed/image", json=body).status_code == 500
    view = _canary_view(service)
    assert view["window_errors"] == 5 and view["rolled_back"]


@pytest.fixture
def mux_encoder(tmp_path):
    make_open_clip_dir(tmp_path / "alpha", seed=1)
    spec = MultiplexedProfileSpec(checkpoint_dir=str(tmp_path), max_models_per_replica=1)
    return MultiplexedClipEncoder("custom", spec, choose_device("cpu"), limits=LIMITS)

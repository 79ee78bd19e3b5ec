"""Priority classes: the header capped by the key's class, and the class reaching the
encoder's forward scheduler over handle calls (no Ray)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import ValidationError

from clipfleet.api.app import create_app
from clipfleet.api.middleware.auth import key_id
from clipfleet.config import AuthConfig, FetchLimits, MultiplexedProfileSpec
from clipfleet.images.decode_pool import BudgetedDecoder
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress import priority
from clipfleet.ingress.affinity import ROUTE_KEY, AffinityHandle
from clipfleet.ingress.priority import (
    BULK,
    INTERACTIVE,
    ClassedSlots,
    PriorityHandle,
    cap,
    parse,
    prioritize_handles,
)
from clipfleet.models.device import choose_device
from clipfleet.replicas.multiplexed import REQUESTED_MODEL, MultiplexedClipEncoder
from tests.support.handles import Answering, LocalHandle
from tests.support.images import image_base64, image_bytes
from tests.support.local_dag import build_local_service
from tests.support.servers import ThreadedImageServer
from tests.support.tiny_models import make_open_clip_dir

KEYS_ENV = "CLIPFLEET_TEST_PRIORITY_KEYS"
BULK_KEY, FULL_KEY = "bulk-only-key", "interactive-key"


def test_the_header_is_capped_by_what_the_key_allows():
    assert cap(None, INTERACTIVE) == INTERACTIVE
    assert cap(None, BULK) == BULK
    assert cap(BULK, INTERACTIVE) == BULK  # anyone may ask for less
    assert cap(INTERACTIVE, BULK) == BULK  # never more than the key allows
    assert parse(" Bulk ") == BULK and parse("") is None and parse(None) is None
    with pytest.raises(ValueError, match="must be one of"):
        parse("urgent")


def test_key_classes_are_keyed_by_key_id_never_the_secret():
    AuthConfig(priorities={key_id(BULK_KEY): BULK})
    with pytest.raises(ValidationError):
        AuthConfig(priorities={BULK_KEY: BULK})
    with pytest.raises(ValidationError):
        AuthConfig(priorities={key_id(BULK_KEY): "urgent"})


@pytest.fixture(scope="module")
def keyed(tiny_args):
    """The app over isolated handles (calls in a fresh context, as over Ray: nothing the ingress
    set in its context variables reaches the replica unless the call carries it) wrapped as
    replica_service wraps them, two keys."""
    auth = AuthConfig(api_keys_env=KEYS_ENV, priorities={key_id(BULK_KEY): BULK})
    args = tiny_args.model_copy(update={"auth": auth})
    isolated = lambda target: PriorityHandle(LocalHandle(target, isolated=True))  # noqa: E731
    service = build_local_service(args, isolated)
    return service, create_app(service)


@pytest.fixture
def client(keyed, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv(KEYS_ENV, f"{BULK_KEY},{FULL_KEY}")
    with TestClient(keyed[1]) as test_client:
        yield test_client


def clip_scheduler(service):
    return service.profiles["fast"].clip["stable"]._handle._target.scheduler


@pytest.mark.parametrize(
    ("key", "asked", "served"),
    [
        (FULL_KEY, None, INTERACTIVE),
        (FULL_KEY, "bulk", BULK),
        (BULK_KEY, None, BULK),
        (BULK_KEY, "interactive", BULK),  # capped, not refused
    ],
)
def test_each_request_is_served_in_its_capped_class(keyed, client, key, asked, served):
    scheduler = clip_scheduler(keyed[0])
    before = dict(scheduler.forwards_by_class)
    headers = {"X-API-Key": key} | ({priority.HEADER: asked} if asked else {})
    text = f"a {key} asking {asked}"  # never cached: it must reach a forward
    response = client.post("/v1/embed/text", json={"texts": [text]}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers[priority.HEADER] == served
    assert scheduler.forwards_by_class[served] == before[served] + 1


def test_url_images_are_fetched_and_encoded_in_their_class(keyed, client):
    """The fetcher's decode (its classed decode threads: bulk on the lower-priority ones)
    and the encoder's forward both see the request's class. One client for both: the
    fetcher's HTTP session belongs to the first TestClient's event loop."""
    scheduler = clip_scheduler(keyed[0])
    decodes = keyed[0].fetcher._handle._target._fetcher.decoder.slots.turns.served
    images = ThreadedImageServer().start()
    try:
        for seed, key, served in [(264, BULK_KEY, BULK), (265, FULL_KEY, INTERACTIVE)]:
            before = dict(scheduler.forwards_by_class), dict(decodes)
            body = {"images": [{"url": f"{images.base_url}/img.jpg?seed={seed}"}]}  # not cached
            response = client.post("/v1/embed/image", json=body, headers={"X-API-Key": key})
            assert response.status_code == 200, response.text
            assert scheduler.forwards_by_class[served] == before[0][served] + 1
            assert decodes[served] == before[1][served] + 1
    finally:
        images.stop()


@pytest.mark.parametrize(
    ("route", "body", "methods", "forwards"),
    [
        (  # a request's inline images: one embed_images call, decoded by the encoder
            "/v1/embed/image",
            {"images": [{"base64": image_base64(seed=261)}, {"base64": image_base64(seed=262)}]},
            ["embed_images"],
            (1, 2),  # the two images share a forward or not
        ),
        (  # /v1/score's inline image and its text: one embed_pair call, two forwards
            "/v1/score",
            {"pairs": [{"image": {"base64": image_base64(seed=263)}, "text": "a bulk pair"}]},
            ["embed_pair"],
            (2, 2),  # an image forward and a text forward
        ),
    ],
)
def test_inline_images_reach_the_scheduler_in_their_class(
    keyed, client, route, body, methods, forwards
):
    """The inline paths (embed_images, embed_pair) carry the class as embed_image does."""
    clip = keyed[0].profiles["fast"].clip["stable"]._handle
    scheduler = clip._target.scheduler
    before, calls_before = dict(scheduler.forwards_by_class), len(clip.calls)
    response = client.post(route, json=body, headers={"X-API-Key": BULK_KEY})
    assert response.status_code == 200, response.text
    assert response.headers[priority.HEADER] == BULK
    embedding_calls = [
        call.method for call in clip.calls[calls_before:] if call.method.startswith("embed")
    ]
    assert embedding_calls == methods
    ran = {name: scheduler.forwards_by_class[name] - before[name] for name in before}
    assert ran[INTERACTIVE] == 0
    assert forwards[0] <= ran[BULK] <= forwards[1]


@pytest.fixture
def mux_encoder(tmp_path):
    make_open_clip_dir(tmp_path / "alpha", seed=1)
    spec = MultiplexedProfileSpec(checkpoint_dir=str(tmp_path), max_models_per_replica=1)
    return MultiplexedClipEncoder("custom", spec, choose_device("cpu"))


@pytest.mark.parametrize("kind", ["clip", "multiplexed"])
def test_the_inline_methods_schedule_by_the_class_they_are_sent(kind, clip, mux_encoder):
    """embed_images and embed_pair, on both CLIP encoders: `priority=` decides the queue of
    every forward they cause (images decoded in the encoder, and the pair's text)."""
    encoder = clip if kind == "clip" else mux_encoder
    scheduler = encoder.scheduler
    images = [ImageSource(data=image_bytes(seed=seed)) for seed in (271, 272, 273)]

    async def call(method, *args, **kwargs):
        REQUESTED_MODEL.set("alpha")  # the multiplexed encoder's model; ignored by the other
        return await method(*args, **kwargs)

    def run(priority_class, method, *args) -> dict[str, int]:
        before = dict(scheduler.forwards_by_class)
        keywords = {} if priority_class is None else {"priority": priority_class}
        asyncio.run(call(method, *args, **keywords))
        return {name: scheduler.forwards_by_class[name] - before[name] for name in before}

    ran = run(BULK, encoder.embed_images, images[:2])
    assert ran[INTERACTIVE] == 0 and 1 <= ran[BULK] <= 2
    assert run(BULK, encoder.embed_pair, images[2], "a bulk text") == {INTERACTIVE: 0, BULK: 2}
    ran = run(None, encoder.embed_pair, ImageSource(data=image_bytes(seed=274)), "another")
    assert ran == {INTERACTIVE: 2, BULK: 0}  # sent no class: interactive


def test_a_header_naming_no_class_is_a_422(client):
    headers = {"X-API-Key": FULL_KEY, priority.HEADER: "urgent"}
    response = client.post("/v1/embed/text", json={"texts": ["x"]}, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == priority.HEADER


async def test_handles_pass_only_bulk_and_only_to_embedding_calls():
    inner = LocalHandle(Answering())
    handle = prioritize_handles({"fast": [inner]})["fast"][0]
    responses = [handle.embed_texts.remote(["a"])]
    token = priority.CURRENT.set(BULK)
    try:
        responses.append(handle.embed_image.remote("pixels"))
        responses.append(handle.embed_images.remote(["pixels"]))
        responses.append(handle.embed_pair.remote("pixels", "c"))
        responses.append(handle.options(multiplexed_model_id="m").embed_text.remote("b"))
        responses.append(handle.fetch.remote("https://example.com/a.jpg"))
        responses.append(handle.describe.remote())
    finally:
        priority.CURRENT.reset(token)
    await asyncio.gather(*responses)
    assert [(call.method, call.kwargs) for call in inner.calls] == [
        ("embed_texts", {}),
        ("embed_image", {"priority": BULK}),
        ("embed_images", {"priority": BULK}),
        ("embed_pair", {"priority": BULK}),
        ("embed_text", {"priority": BULK}),
        ("fetch", {"priority": BULK}),
        ("describe", {}),
    ]


@pytest.mark.parametrize("outer", ["affinity", "priority"])
def test_a_call_carries_both_its_class_and_its_route_key(outer):
    """The ingress wraps the encoders' handles in PriorityHandle and the service wraps some in
    AffinityHandle (clipfleet/ingress/affinity.py): one call carries both keywords, in either
    order."""
    inner = LocalHandle(Answering())
    if outer == "affinity":
        handle = AffinityHandle(PriorityHandle(inner))
    else:
        handle = PriorityHandle(AffinityHandle(inner))
    image = ImageSource(data=image_bytes(seed=281))

    async def calls():
        await handle.embed_pair.remote(image, "a cat", timed=True)
        await handle.embed_images.remote([image])
        await handle.embed_text.remote("a dog")

    token = priority.CURRENT.set(BULK)
    try:
        asyncio.run(calls())
    finally:
        priority.CURRENT.reset(token)
    assert [call.method for call in inner.calls] == ["embed_pair", "embed_images", "embed_text"]
    for call in inner.calls:
        assert call.kwargs[priority.KEYWORD] == BULK and isinstance(call.kwargs[ROUTE_KEY], bytes)


async def decode_order(decoder: BudgetedDecoder, work: list[tuple[str, str]]) -> list[str]:
    """Hold the decoder's one thread, queue `work` ((class, name) pairs, in that order) as
    requests of those classes, release; the names in the order their decodes ran."""
    entered, gate, order = threading.Event(), threading.Event(), []

    def then(name: str):
        def run(pixels):
            entered.set()
            if name == "blocker":
                gate.wait(10)
            order.append(name)
            return name

        return run

    async def decode(name: str, priority_class: str) -> str:
        priority.CURRENT.set(priority_class)  # this task's own context, as a request's
        return await decoder.decode(image_bytes(), then=then(name))

    blocker = asyncio.create_task(decode("blocker", INTERACTIVE))
    await asyncio.to_thread(entered.wait, 10)
    tasks = []
    for priority_class, name in work:
        tasks.append(asyncio.create_task(decode(name, priority_class)))
        await asyncio.sleep(0.01)  # queued in this order
    gate.set()
    await asyncio.gather(blocker, *tasks)
    return order


async def test_interactive_images_decode_before_bulk_images_queued_earlier():
    """An encoder's decode threads (inline images) serve interactive requests first: the bulk
    request's images queued before it wait (first come, first served, they went first)."""
    decoder = BudgetedDecoder(FetchLimits(decode_threads=1))
    work = [(BULK, "b1"), (BULK, "b2"), (BULK, "b3"), (INTERACTIVE, "i1"), (INTERACTIVE, "i2")]
    try:
        order = await decode_order(decoder, work)
    finally:
        decoder.close()
    assert order == ["blocker", "i1", "i2", "b1", "b2", "b3"]
    assert decoder.slots.busy == 0 and decoder.budget.in_use == 0


async def test_bulk_decodes_keep_one_turn_in_bulk_every_under_a_stream_of_interactive_ones():
    decoder = BudgetedDecoder(FetchLimits(decode_threads=1))
    decoder.slots.turns.bulk_every = 3
    work = [(BULK, "b1"), (BULK, "b2")] + [(INTERACTIVE, f"i{n}") for n in range(1, 8)]
    try:
        order = await decode_order(decoder, work)
    finally:
        decoder.close()
    assert order == ["blocker", "i1", "i2", "b1", "i3", "i4", "b2", "i5", "i6", "i7"]


async def test_a_cancelled_slot_waiter_takes_no_slot():
    slots = ClassedSlots(1)
    await slots.acquire(INTERACTIVE)
    waiting = asyncio.create_task(slots.acquire(BULK))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    slots.release()
    assert slots.busy == 0 and slots.waiting() == {INTERACTIVE: 0, BULK: 0}
    await slots.acquire(BULK)
    assert slots.busy == 1 and slots.turns.served == {INTERACTIVE: 1, BULK: 1}


async def test_the_encoders_bulk_every_sets_the_decode_threads_share_too(clip):
    await clip.reconfigure({"bulk_every": 7})
    encoder = clip
    assert encoder.scheduler.bulk_every == encoder.inputs.decoder.slots.turns.bulk_every == 7
    with pytest.raises(ValueError, match="at least 2"):
        encoder.inputs.decoder.slots.turns.bulk_every = 1

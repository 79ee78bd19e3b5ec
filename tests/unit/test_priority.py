"""Priority classes: the header capped by the key's class, and the class reaching the
encoder's forward scheduler over handle calls (no Ray)."""

from __future__ import annotations

import contextvars

import pytest
from pydantic import ValidationError

from clipfleet import priority
from clipfleet.api.app import create_app
from clipfleet.api.auth import key_id
from clipfleet.config import AuthConfig
from clipfleet.priority import BULK, INTERACTIVE, PriorityHandle, cap, parse, prioritize_handles
from tests.support.local_dag import LocalHandle, build_local_service
from tests.support.servers import ThreadedImageServer

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


class IsolatedHandle(LocalHandle):
    """A LocalHandle whose calls run in a fresh context, as over Ray: nothing the ingress set
    in its context variables reaches the replica unless the call carries it."""

    def __getattr__(self, name: str):
        method = super().__getattr__(name)

        class Isolated:
            def remote(self, *args, **kwargs):
                return contextvars.Context().run(method.remote, *args, **kwargs)

        return Isolated()


@pytest.fixture(scope="module")
def keyed(tiny_args):
    """The app over isolated handles wrapped as replica_service wraps them, two keys."""
    auth = AuthConfig(api_keys_env=KEYS_ENV, priorities={key_id(BULK_KEY): BULK})
    args = tiny_args.model_copy(update={"auth": auth})
    service = build_local_service(args, lambda target: PriorityHandle(IsolatedHandle(target)))
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


def test_url_images_reach_the_encoder_in_their_class(keyed, client):
    scheduler = clip_scheduler(keyed[0])
    before = scheduler.forwards_by_class[BULK]
    images = ThreadedImageServer().start()
    try:
        body = {"images": [{"url": f"{images.base_url}/img.jpg"}]}
        response = client.post("/v1/embed/image", json=body, headers={"X-API-Key": BULK_KEY})
    finally:
        images.stop()
    assert response.status_code == 200, response.text
    assert scheduler.forwards_by_class[BULK] == before + 1


def test_a_header_naming_no_class_is_a_422(client):
    headers = {"X-API-Key": FULL_KEY, priority.HEADER: "urgent"}
    response = client.post("/v1/embed/text", json={"texts": ["x"]}, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == priority.HEADER


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name):
        calls = self.calls

        class Method:
            def remote(self, *args, **kwargs):
                calls.append((name, kwargs))

        return Method()

    def options(self, **options):
        return self


def test_handles_pass_only_bulk_and_only_to_embedding_calls():
    handle = prioritize_handles({"fast": [Recording()]})["fast"][0]
    handle.embed_texts.remote(["a"])
    token = priority.CURRENT.set(BULK)
    try:
        handle.embed_image.remote("pixels")
        handle.options(multiplexed_model_id="m").embed_text.remote("b")
        handle.describe.remote()
    finally:
        priority.CURRENT.reset(token)
    assert handle._handle.calls == [
        ("embed_texts", {}),
        ("embed_image", {"priority": BULK}),
        ("embed_text", {"priority": BULK}),
        ("describe", {}),
    ]

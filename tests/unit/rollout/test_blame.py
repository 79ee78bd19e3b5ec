"""Nothing a client controls rolls a healthy canary back (issue 23, item 2).

The real app over the in-process graph (two tiny CLIP variants, the real TrafficManager),
driven with a route key that lands on the canary (unpinned, so it counts): hostile URLs,
payloads, headers, a slow upstream past the deadline, a body cut off mid-way and clients that
hang up. Each gets its 4xx / 499 / 502 / 504 (a fetcher bug a 500), none counts against the
canary, and it stays in. Then the same canary made to fail is rolled back: the guard works.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging

import pytest
from fastapi.testclient import TestClient

from clipfleet.api.app import create_app
from clipfleet.config import AppArgs, ClipModelSpec, ProfileSpec, ResNetSpec
from clipfleet.replicas.fetcher import Fetcher
from clipfleet.rollout.traffic import RollbackPolicy, TrafficConfig
from tests.support.handles import LocalHandle
from tests.support.hostile_corpus import INVALID_HOSTS
from tests.support.images import image_base64
from tests.support.local_dag import build_local_service, loopback_fetch

DEADLINE_S = 0.5  # of the app that serves the slow upstream
FETCHER_BUG_URL = "http://fetcher-bug.test/x.jpg"


@pytest.fixture(scope="module")
def canary_service(model_dir):
    spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    resnet = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    profile = ProfileSpec(variants={"stable": spec, "canary": spec}, resnet=resnet)
    args = AppArgs(
        profiles={"fast": profile},
        fetch=loopback_fetch(timeout_s=10),
        limits={"max_items": 8},
    )
    service = build_local_service(args)
    fetcher = service.fetcher._target
    fetch = fetcher.fetch

    async def fetch_with_a_bug(source, geometry=None):  # a bug outside the encoder, any class
        if source.url == FETCHER_BUG_URL:
            raise UnicodeError("label empty or too long")
        return await fetch(source, geometry)

    fetcher.fetch = fetch_with_a_bug
    clock = [5000.0]
    service.traffic._clock = lambda: clock[0]
    policy = RollbackPolicy(min_requests=5, window_s=60, max_error_ratio_increase=0.05)
    weights = {"fast": {"stable": 50, "canary": 50}}
    service.apply_traffic(TrafficConfig(weights=weights, rollback=policy))
    clock[0] += policy.bucket_s  # requests come after the bucket in which the epoch began
    return service


@pytest.fixture(scope="module")
def canary_key(canary_service) -> str:
    return next(
        key
        for key in (f"client-{n}" for n in range(1000))
        if canary_service.traffic.choose("fast", key) == "canary"
    )


def hostile_requests(hostile) -> list[tuple[str, dict, dict, int, str]]:
    """(path, json body or raw `content`, extra headers, status, error type)."""
    image = {"base64": image_base64()}
    cases: list[tuple[str, dict, dict, int, str]] = []
    for url in INVALID_HOSTS:
        body = {"images": [image, {"url": url}]}
        cases.append(("/v1/embed/image", {"json": body}, {}, 400, "invalid_url"))
        pair = {"pairs": [{"image": {"url": url}, "text": "a cat"}]}
        cases.append(("/v1/score", {"json": pair}, {}, 400, "invalid_url"))
    cases.append(("/v1/tag", {"json": {"image": {"url": INVALID_HOSTS[0]}}}, {}, 400, ""))
    urls = {
        f"{hostile.base_url}/nothing-here.jpg": (502, "upstream_error"),
        f"{hostile.base_url}/big": (413, "payload_too_large"),
        "http://10.0.0.1/x.jpg": (403, "forbidden_url"),
        "http://[::1]:9/x.jpg": (403, "forbidden_url"),
        "ftp://example.com/x.jpg": (400, "invalid_url"),
        FETCHER_BUG_URL: (500, "internal_error"),  # a bug, but not the canary's
    }
    for url, (status, kind) in urls.items():
        body = {"images": [{"url": url}]}
        cases.append(("/v1/embed/image", {"json": body}, {}, status, kind))
    garbage = [
        ({"images": [{"base64": "bm90IGFuIGltYWdl"}]}, 415, "unsupported_media_type"),
        ({"images": [{"base64": "%%%"}]}, 400, "invalid_request"),
        ({"images": [image] * 9}, 413, "payload_too_large"),
        ({"images": [{"url": "http://x/", "base64": "AA=="}]}, 422, "invalid_request"),
    ]
    cases += [("/v1/embed/image", {"json": b}, {}, s, k) for b, s, k in garbage]
    cases.append(("/v1/embed/text", {"json": {"texts": ["x" * 5000]}}, {}, 422, ""))
    as_json = {"content-type": "application/json"}
    cases.append(("/v1/embed/text", {"content": b'{"texts": ['}, as_json, 400, "invalid_json"))
    pinned = {"X-Clipfleet-Variant": "nope"}
    cases.append(("/v1/embed/text", {"json": {"texts": ["a"]}}, pinned, 422, ""))
    return cases


def side_app(service, deadline_s: float):
    """The same graph and traffic state behind an app whose requests time out sooner, with a
    fetcher of its own (an aiohttp session belongs to the event loop that made it)."""
    service = copy.copy(service)
    limits = service.args.limits.model_copy(update={"request_timeout_s": deadline_s})
    service.args = service.args.model_copy(update={"limits": limits})
    service.fetcher = LocalHandle(Fetcher(service.args.fetch))
    return create_app(service)


def canary_outcomes(service) -> dict:
    service.traffic.sync()
    return service.traffic_view()["fast"]["canary"]


async def call_asgi(app, body: bytes, disconnect_after: int | None, cancel_after_s: float | None):
    """POST /v1/embed/image straight to the ASGI app: the body cut off after
    `disconnect_after` bytes (the client hung up mid-upload), or the request cancelled after
    `cancel_after_s` (what Serve does when the client goes away while it waits)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/embed/image",
        "raw_path": b"/v1/embed/image",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    chunks = [body] if disconnect_after is None else [body[:disconnect_after]]
    sent: list[dict] = []

    async def receive():
        if chunks:
            more = disconnect_after is not None
            return {"type": "http.request", "body": chunks.pop(0), "more_body": more}
        if disconnect_after is not None:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # the client sends nothing more

    async def send(message):
        sent.append(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    if cancel_after_s is not None:
        await asyncio.sleep(cancel_after_s)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    return sent


def test_nothing_a_client_controls_rolls_a_healthy_canary_back(
    canary_service, canary_key, hostile, caplog
):
    keyed = {"X-Clipfleet-Route-Key": canary_key}
    good = {"images": [{"base64": image_base64()}]}
    encoder = canary_service.profiles["fast"].clip["canary"]._target
    with TestClient(create_app(canary_service)) as client:
        for _ in range(6):  # the canary is judged: it has min_requests in the window
            served = client.post("/v1/embed/image", json=good, headers=keyed)
            assert served.status_code == 200 and served.json()["variant"] == "canary"
            assert client.post("/v1/embed/image", json=good).status_code == 200
        for path, body, headers, status, kind in hostile_requests(hostile):
            response = client.post(path, **body, headers={**keyed, **headers})
            assert response.status_code == status, (path, body, response.text)
            error = response.json()["error"]
            assert not kind or error["type"] == kind, (path, body, error)
            assert "Traceback" not in response.text and "UnicodeError" not in response.text

        drip = {"images": [{"url": f"{hostile.base_url}/drip"}]}
        with TestClient(side_app(canary_service, DEADLINE_S)) as slow:
            timed_out = slow.post("/v1/embed/image", json=drip, headers=keyed)
        assert timed_out.status_code == 504  # dripped past the request's deadline
        assert timed_out.json()["error"]["type"] == "request_timeout"

        body = json.dumps(drip).encode()
        serve_logger = logging.getLogger("ray.serve")  # Ray's: it may not propagate to root
        serve_logger.addHandler(caplog.handler)
        caplog.clear()
        try:
            with caplog.at_level(logging.INFO, logger="ray.serve"):
                app = side_app(canary_service, 30)
                cut_off = asyncio.run(call_asgi(app, body, 10, cancel_after_s=None))
                hung_up = asyncio.run(call_asgi(app, body, None, cancel_after_s=0.5))
        finally:
            serve_logger.removeHandler(caplog.handler)
        assert cut_off[0]["status"] == 499 and not hung_up  # nobody was there to answer
        logged = {r.getMessage() for r in caplog.records if r.getMessage().startswith("POST")}
        assert sum(" 499 " in line for line in logged) == 2, logged  # each request, once
        assert not any(" 500 " in line for line in logged), logged

        canary = canary_outcomes(canary_service)
        assert canary["window_errors"] == 0 and not canary["rolled_back"], canary
        assert canary["window_requests"] >= 6  # the successes (unkeyed ones land there too)

        # The guard itself works: the same canary failing in its own replica is rolled back.
        asyncio.run(encoder.reconfigure({"fault_error_ratio": 1.0}))
        try:
            for _ in range(3):
                failed = client.post("/v1/embed/image", json=good, headers=keyed)
                assert failed.status_code == 500
            assert canary_outcomes(canary_service)["rolled_back"]
        finally:
            asyncio.run(encoder.reconfigure({}))

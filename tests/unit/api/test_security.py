"""The error contract, limits, API keys and CORS on the Ray-free app.

Errors are injected as a downstream deployment would raise them (wrapped in Ray's RayTaskError)
or as Ray itself does (back-pressure, dead replicas, timeouts)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os

import pytest
from fastapi.testclient import TestClient
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from clipfleet import errors
from clipfleet.api.app import create_app
from clipfleet.config import ApiLimits, AuthConfig, CorsConfig
from clipfleet.ingress.service import ClipfleetService
from tests.support.local_dag import build_local_service, in_process_states

KEYS_ENV = "CLIPFLEET_TEST_API_KEYS"
TEXT = {"texts": ["a cat"]}


@pytest.fixture(scope="module")
def base_service(tiny_args):
    return build_local_service(tiny_args)


@pytest.fixture
def serve(base_service, client_for):
    """The local service with some AppArgs fields replaced, and a client of its own app."""

    def install(**fields) -> tuple[ClipfleetService, TestClient]:
        service = copy.copy(base_service)
        service.args = base_service.args.model_copy(update=fields)
        return service, client_for(service)

    return install


def failing(service, exc: BaseException, delay_s: float = 0.0):
    async def embed_texts(*args, **kwargs):
        await asyncio.sleep(delay_s)
        raise exc

    service.embed_texts = embed_texts


def downstream(error: BaseException) -> BaseException:
    """What a deployment's exception looks like when it reaches the ingress."""
    return RayTaskError(
        "fetch", "Traceback (most recent call last): ...", error
    ).as_instanceof_cause()


CLIPFLEET_ERRORS = [
    (errors.InvalidRequestError, 400),
    (errors.InvalidImageError, 400),
    (errors.ForbiddenUrlError, 403),
    (errors.NotFoundError, 404),
    (errors.PayloadTooLargeError, 413),
    (errors.UnsupportedMediaTypeError, 415),
    (errors.UpstreamError, 502),
    (errors.ServiceUnavailableError, 503),
    (errors.UpstreamTimeoutError, 504),
]


@pytest.mark.parametrize(("cls", "status"), CLIPFLEET_ERRORS)
def test_downstream_errors_keep_their_status(serve, cls, status):
    service, client = serve()
    failing(service, downstream(cls("what went wrong", "images[2]")))
    response = client.post("/v1/embed/text", json=TEXT)
    assert response.status_code == status
    assert response.json() == {
        "error": {
            "type": cls.type,
            "message": "what went wrong",
            "param": "images[2]",
            "code": cls.code,
        }
    }
    assert (response.headers.get("Retry-After") is not None) == (status == 503)


@pytest.mark.parametrize(
    ("exc", "status", "retry_after"),
    [
        (BackPressureError(8, 8, retry_after_s=2.0), 503, "2"),
        (downstream(BackPressureError(8, 8)), 503, "1"),
        (ActorDiedError(), 503, "1"),
        (ActorUnavailableError("restarting", b"a" * 16), 503, "1"),
        (DeploymentUnavailableError(DeploymentID("clip_fast", "app")), 503, "1"),
        (TimeoutError(), 504, None),
    ],
)
def test_ray_failures_are_503_or_504(serve, exc, status, retry_after):
    service, client = serve()
    failing(service, exc)
    response = client.post("/v1/embed/text", json=TEXT)
    assert response.status_code == status, response.text
    assert response.headers.get("Retry-After") == retry_after
    assert response.json()["error"]["type"] in {"service_unavailable", "request_timeout"}


def test_bugs_are_a_generic_500_with_the_request_id(serve):
    service, client = serve()
    failing(service, downstream(KeyError("/secret/path")))
    response = client.post("/v1/embed/text", json=TEXT, headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "internal_error"
    assert "req-42" in response.json()["error"]["message"]
    assert "secret" not in response.text and "Traceback" not in response.text


def test_requests_without_an_id_get_one_on_success_and_on_errors(serve):
    _, client = serve()
    ok = client.post("/v1/embed/text", json=TEXT)
    service, client = serve()
    failing(service, downstream(KeyError("boom")))
    failed = client.post("/v1/embed/text", json=TEXT)
    assert ok.status_code == 200 and failed.status_code == 500
    for response in (ok, failed):
        request_id = response.headers["X-Request-ID"]
        assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert ok.headers["X-Request-ID"] != failed.headers["X-Request-ID"]
    assert failed.headers["X-Request-ID"] in failed.json()["error"]["message"]


def test_a_client_request_id_is_not_echoed_twice(serve):
    _, client = serve()
    response = client.post("/v1/embed/text", json=TEXT, headers={"X-Request-ID": "req-7"})
    assert response.headers.get_list("X-Request-ID") == []  # Ray's proxy echoes it, not the app


def test_request_deadline_gives_504(serve):
    service, client = serve(limits=ApiLimits(request_timeout_s=0.3))
    failing(service, RuntimeError("late"), delay_s=5)
    response = client.post("/v1/embed/text", json=TEXT)
    assert response.status_code == 504 and response.json()["error"]["type"] == "request_timeout"


def test_body_limit_declared_and_chunked(serve):
    _, client = serve(limits=ApiLimits(max_body_bytes=2048))
    body = b'{"texts": ["' + b"x" * 4096 + b'"]}'
    declared = client.post(
        "/v1/embed/text", content=body, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and declared.json()["error"]["type"] == "payload_too_large"

    def chunks():  # no Content-Length: Transfer-Encoding chunked
        yield body[:1000]
        yield body[1000:]

    chunked = client.post(
        "/v1/embed/text", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "payload_too_large"
    files = {"image": ("a.jpg", b"\xff" * 4096, "image/jpeg")}
    assert client.post("/v1/embed/image/upload", files=files).status_code == 413
    assert client.post("/v1/embed/text", json=TEXT).status_code == 200


@pytest.fixture
def keys(monkeypatch, serve):
    """(service, client) with API keys from the environment."""
    monkeypatch.setenv(KEYS_ENV, " key-one , key-two ")
    return serve(auth=AuthConfig(api_keys_env=KEYS_ENV))


def test_api_keys_from_the_environment(keys):
    _, client = keys
    missing = client.post("/v1/embed/text", json=TEXT)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = client.post("/v1/embed/text", json=TEXT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["type"] == "forbidden"
    bearer = client.post("/v1/embed/text", json=TEXT, headers={"Authorization": "Bearer key-two"})
    assert bearer.status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "key-one"}).status_code == 200
    assert client.get("/v1/nothing").status_code == 401  # unknown routes are not probe-able
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_readyz_shows_details_only_to_valid_keys(keys):
    _, client = keys
    for headers in ({}, {"X-API-Key": "nope"}):
        anonymous = client.get("/readyz", headers=headers)
        assert anonymous.status_code == 200
        assert set(anonymous.json()) == {"status", "model"}  # seed 004's clients read these
    full = client.get("/readyz", headers={"Authorization": "Bearer key-one"}).json()
    assert full["status"] == "ready" and "fast.clip" in full["deployments"]


def test_api_key_is_the_sticky_routing_key(keys):
    service, client = keys
    seen = []

    async def embed_texts(texts, profile, routing):
        seen.append(routing)
        raise errors.InvalidRequestError("stop here")

    service.embed_texts = embed_texts
    for key in ("key-one", "key-one", "key-two"):
        client.post("/v1/embed/text", json=TEXT, headers={"X-API-Key": key})
    client.post(
        "/v1/embed/text",
        json=TEXT,
        headers={"X-API-Key": "key-one", "X-Clipfleet-Route-Key": "mine"},
    )
    assert seen[0].key == seen[1].key != seen[2].key and seen[0].key.startswith("key-")
    assert "key-one" not in seen[0].key and seen[3].key == "mine"


def test_api_keys_from_a_rotated_file(serve, tmp_path):
    secret = tmp_path / "api-keys"
    secret.write_text("# rotated monthly\nfile-key-1\n")
    _, client = serve(auth=AuthConfig(api_keys_env=KEYS_ENV, api_keys_file=str(secret)))
    assert client.get("/v1/models", headers={"X-API-Key": "file-key-1"}).status_code == 200
    secret.write_text("file-key-2\n")
    os.utime(secret, (1, 1))  # a new mtime even within the filesystem's time resolution
    assert client.get("/v1/models", headers={"X-API-Key": "file-key-1"}).status_code == 403
    assert client.get("/v1/models", headers={"X-API-Key": "file-key-2"}).status_code == 200
    secret.unlink()  # unreadable secret: fail closed
    assert client.get("/v1/models", headers={"X-API-Key": "file-key-2"}).status_code == 403


def test_cors_off_by_default_and_configurable(serve, monkeypatch):
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    _, client = serve()
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    monkeypatch.setenv(KEYS_ENV, "k")
    _, client = serve(
        cors=CorsConfig(allow_origins=("https://app.example",)),
        auth=AuthConfig(api_keys_env=KEYS_ENV),
    )
    answer = client.options("/v1/embed/text", headers=preflight)
    assert answer.status_code == 200  # preflights carry no key and must not need one
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    denied = client.post("/v1/embed/text", json=TEXT, headers=origin)
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options(
        "/v1/embed/text", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_serves_own_plain_503_handlers_become_the_envelope(base_service):
    """Ray Serve adds FastAPI handlers for its back-pressure errors that answer plain text."""
    from starlette.responses import Response

    service = copy.copy(base_service)
    app = create_app(service)
    app.add_exception_handler(  # what Ray's replica does to an ingress app
        BackPressureError,
        lambda request, exc: Response(exc.message, 503, headers={"Retry-After": "3"}),
    )
    failing(service, BackPressureError(8, 8))
    with TestClient(app) as ray_like:
        response = ray_like.post("/v1/embed/text", json=TEXT)
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert response.json()["error"]["type"] == "service_unavailable"


def test_readiness_fails_while_a_deployment_runs_no_replica_and_recovers(serve):
    """The local graph answers /readyz from ReadinessView too (the one readiness there is): a
    deployment with no RUNNING replica is not ready; it is again once one runs."""
    service, client = serve()
    running = {"Scorer": 0}

    def states():
        app, deployments = in_process_states(service.fleet)
        deployments["Scorer"] = {"status": "UPDATING", "replicas": {"RUNNING": running["Scorer"]}}
        return app, deployments

    service.fleet = dataclasses.replace(
        service.fleet, readiness_view=None, refresh_on_probe=False, states=states
    )
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.headers["Retry-After"]
    assert not_ready.json()["deployments"]["scorer"]["ready"] is False
    running["Scorer"] = 1
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 415, 503, 418])
def test_framework_statuses_map_to_the_classes_types(status):
    error = errors.error_for_status(status, "detail")
    assert error.status == status and error.message == "detail"
    expected = {400: "invalid_request", 418: "http_error"}.get(status)
    if expected is None:
        assert type(error).status == status and error.type != "http_error"
    else:
        assert error.type == expected

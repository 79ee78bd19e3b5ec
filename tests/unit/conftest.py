"""Unit-tier fixtures: the real FastAPI app over the Ray-free local DAG (tiny models)."""

from __future__ import annotations

import contextlib

import pytest
from fastapi.testclient import TestClient

from clipfleet.api.app import create_app
from tests.support.local_dag import build_local_service


@pytest.fixture(scope="module")
def client(tiny_args):
    with TestClient(create_app(build_local_service(tiny_args))) as test_client:
        yield test_client


@pytest.fixture
def client_for():
    """`client_for(service)`: a TestClient over `create_app(service)`, closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda service: stack.enter_context(TestClient(create_app(service)))


@pytest.fixture(scope="module")
def clip_spec(model_dir):
    from clipfleet.config import ClipModelSpec

    return ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")


@pytest.fixture
def clip(clip_spec):
    """A plain CLIP encoder replica (no Ray) over the tiny open_clip model, on the CPU."""
    from clipfleet.models.device import choose_device
    from clipfleet.replicas.clip import ClipEncoder

    return ClipEncoder(clip_spec, choose_device("cpu"), replica_id="r-1")


@pytest.fixture(scope="module")
def server_url(tiny_args):
    """The app over the local DAG behind a real uvicorn on 127.0.0.1 (score-csv's server)."""
    from tests.support.uvicorn_thread import serve_in_thread

    with serve_in_thread(create_app(build_local_service(tiny_args))) as url:
        yield url

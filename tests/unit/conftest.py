"""Unit-tier fixtures."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from clipfleet.api.app import create_app
from clipfleet.api.deps import set_service
from tests.support.local_dag import build_local_service


@pytest.fixture(scope="module")
def client(tiny_args):
    """The real FastAPI app over the Ray-free local DAG (tiny models)."""
    set_service(build_local_service(tiny_args))
    with TestClient(create_app()) as test_client:
        yield test_client
    set_service(None)

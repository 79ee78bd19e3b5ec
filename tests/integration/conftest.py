"""One real local Ray + Serve for the integration tier, running the app on tiny models."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.servers import ThreadedImageServer, free_port

APP_NAME = "clipfleet"
READY_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def ray_serve():
    import ray
    from ray import serve

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def wait_ready(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(f"{base_url}/readyz", timeout=10)
            if last.status_code == 200:
                return last.json()
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready after {timeout_s} s: {last and last.text}")


@pytest.fixture(scope="session")
def app_url(ray_serve, tiny_args):
    from ray import serve

    from pipelines.app import build_app

    serve.run(build_app(tiny_args), name=APP_NAME, route_prefix="/", blocking=False)
    wait_ready(ray_serve)
    return ray_serve


@pytest.fixture(scope="session")
def image_server():
    server = ThreadedImageServer().start()
    yield server
    server.stop()

"""The CLIP encoder scales 1 -> 2 replicas under load and back to 1 after it (bounded)."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from ray import serve

from clipfleet.config import AppArgs, ClipModelSpec, ProfileSpec, ResNetSpec
from tests.integration.conftest import merge_deployments, small_deployments, wait_for, wait_ready

APP = "scaling"
PREFIX = "/scaling"
ENCODER = "clip_fast"
# Test-only: react within seconds; injected latency keeps requests in flight cheaply.
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 5,
    "look_back_period_s": 2,
    "metrics_interval_s": 0.5,
}


def running_replicas() -> int:
    deployment = serve.status().applications[APP].deployments[ENCODER]
    return deployment.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def scaling_url(serve_apps, model_dir):
    spec = ProfileSpec(
        clip=ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}"),
        resnet=ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt")),
    )
    args = AppArgs(profiles={"fast": spec})
    encoder = {
        "name": ENCODER,
        "max_ongoing_requests": 8,
        "autoscaling_config": AUTOSCALING,
        "user_config": {"max_batch_size": 4, "fault_latency_s": 0.3},
    }
    serve_apps.apply(APP, PREFIX, args, merge_deployments(small_deployments(args), [encoder]))
    url = serve_apps.url(PREFIX)
    wait_ready(url)
    return url


def test_encoder_scales_up_under_load_and_down_after(scaling_url):
    assert running_replicas() == 1
    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        deadline = time.monotonic() + 90  # hard bound on the load, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            response = requests.post(
                f"{scaling_url}/v1/embed/text", json={"texts": ["a cat"]}, timeout=60
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(12)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: running_replicas() == 2, 80, message="scale up to 2 replicas")
    finally:
        stop.set()
        for thread in threads:
            thread.join(70)
    assert statuses and set(statuses) == {200}
    wait_for(lambda: running_replicas() == 1, 90, message="scale back down to 1 replica")

"""The CLIP encoder scales 1 -> 2 replicas under load and back to 1 after it (bounded); a
profile scaled to zero (min_replicas 0) serves its first request within its deadline: the
ingress waits for the cold start, and /v1/status then shows the measured cold start."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from ray import serve

from clipfleet.config import ApiLimits, AppArgs, ClipModelSpec, ProfileSpec, ResNetSpec
from tests.support.serve_apps import merge_deployments, small_deployments, wait_for, wait_ready

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


def running_replicas(app: str = APP) -> int:
    deployment = serve.status().applications[app].deployments[ENCODER]
    return deployment.replica_states.get("RUNNING", 0)


def deploy(serve_apps, model_dir, app: str, prefix: str, encoder: dict, **args) -> str:
    """A one-profile app of the tiny models, its clip_fast configured by `encoder`; ready."""
    spec = ProfileSpec(
        clip=ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}"),
        resnet=ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt")),
    )
    app_args = AppArgs(profiles={"fast": spec}, **args)
    deployments = merge_deployments(small_deployments(app_args), [{"name": ENCODER, **encoder}])
    serve_apps.apply(app, prefix, app_args, deployments)
    url = serve_apps.url(prefix)
    wait_ready(url)
    return url


@pytest.fixture(scope="module")
def scaling_url(serve_apps, model_dir):
    encoder = {
        "max_ongoing_requests": 8,
        "autoscaling_config": AUTOSCALING,
        "user_config": {"max_batch_size": 4, "fault_latency_s": 0.3},
    }
    return deploy(serve_apps, model_dir, APP, PREFIX, encoder)


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


# -- scale to zero ----------------------------------------------------------------------
# Test-only: react within a second; Serve starts a replica for the first queued request.
ZERO_APP = "zero"
ZERO_PREFIX = "/zero"
DEADLINE_S = 30.0
ZERO_AUTOSCALING = {
    "min_replicas": 0,
    "max_replicas": 1,
    "initial_replicas": 0,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 0,
    "downscale_delay_s": 600,
    "look_back_period_s": 1,
    "metrics_interval_s": 0.5,
}


@pytest.fixture(scope="module")
def zero_url(serve_apps, model_dir):
    # tiny models start in seconds: an estimate that fits the deadline, as a measured one would
    limits = ApiLimits(request_timeout_s=DEADLINE_S)
    encoder = {"autoscaling_config": ZERO_AUTOSCALING}
    # ready with the encoder at zero replicas
    return deploy(
        serve_apps,
        model_dir,
        ZERO_APP,
        ZERO_PREFIX,
        encoder,
        limits=limits,
        cold_start_estimate_s=10,
    )


def test_a_scaled_to_zero_profile_serves_its_first_request_within_its_deadline(zero_url):
    assert running_replicas(ZERO_APP) == 0
    readiness = requests.get(f"{zero_url}/readyz", timeout=10).json()
    assert readiness["deployments"]["fast.clip"]["scaled_to_zero"] is True
    status = requests.get(f"{zero_url}/v1/status", timeout=30).json()
    assert status["cold_starts"]["fast"]["scaled_to_zero"] is True
    assert running_replicas(ZERO_APP) == 0  # looking at the status woke nothing

    started = time.monotonic()
    response = requests.post(
        f"{zero_url}/v1/embed/text", json={"texts": ["a cat"]}, timeout=DEADLINE_S + 10
    )
    waited_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert waited_s < DEADLINE_S
    assert running_replicas(ZERO_APP) == 1

    def measured():
        view = requests.get(f"{zero_url}/v1/status", timeout=30).json()["cold_starts"]["fast"]
        # the readiness view sees the new replica within a refresh or two
        return view if view["cold_start_measured"] and not view["scaled_to_zero"] else None

    view = wait_for(measured, 30, message="the replica's cold start in /v1/status")
    assert 0 < view["cold_start_s"] < DEADLINE_S
    print(f"first request after scale to zero: {waited_s:.1f} s; cold start {view}")

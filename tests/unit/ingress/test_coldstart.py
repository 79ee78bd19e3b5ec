"""Scale to zero: a cold profile's request waits for a cold start that fits in its deadline,
or gets 503 + Retry-After and wakes the deployment (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from clipfleet.errors import ServiceUnavailableError
from clipfleet.ingress.coldstart import ColdStarts, publish
from clipfleet.rollout.store import MemoryStore
from tests.support.clock import Clock

PROFILES = {"fast": ["clip_fast", "resnet_resnet50"], "accurate": ["clip_accurate"]}


def cold_starts(running: dict[str, int], store=None, estimate_s: float = 40.0):
    woken: list[str] = []

    async def wake(deployment: str) -> None:
        woken.append(deployment)

    starts = ColdStarts(
        PROFILES, running.get, wake, estimate_s, store=store, app="app", clock=Clock()
    )
    return starts, woken


async def test_a_warm_profile_goes_on_at_once():
    starts, woken = cold_starts({"clip_fast": 1, "resnet_resnet50": 1, "clip_accurate": 0})
    await starts.admit("fast", ["clip_fast"], budget_s=0.001)
    assert woken == [] and starts.view()["fast"]["scaled_to_zero"] is False


async def test_a_cold_start_that_fits_the_deadline_is_waited_for():
    store = MemoryStore()
    publish(store, "app", "clip_accurate", 12.5)  # what its last replica measured
    starts, woken = cold_starts({"clip_accurate": 0}, store)
    await starts.admit("accurate", ["clip_accurate"], budget_s=28.0)  # Serve's queue holds it
    assert woken == [] and starts.refused == 0
    view = starts.view()["accurate"]
    assert view == {"scaled_to_zero": True, "cold_start_s": 12.5, "cold_start_measured": True}


async def test_one_that_cannot_fit_is_a_503_with_retry_after_and_wakes_the_deployment():
    store = MemoryStore()
    publish(store, "app", "clip_accurate", 45.2)
    starts, woken = cold_starts({"clip_accurate": 0}, store)
    with pytest.raises(ServiceUnavailableError) as caught:
        await starts.admit("accurate", ["clip_accurate"], budget_s=28.0)
    assert caught.value.status == 503 and caught.value.retry_after_s == 46
    await asyncio.sleep(0.05)  # the wake runs in the background
    assert woken == ["clip_accurate"]


async def test_never_measured_profiles_use_the_configured_estimate():
    starts, _ = cold_starts({"clip_fast": 0, "resnet_resnet50": 1}, estimate_s=40.0)
    with pytest.raises(ServiceUnavailableError) as caught:
        await starts.admit("fast", ["clip_fast"], budget_s=28.0)
    assert caught.value.retry_after_s == 40
    assert starts.view()["fast"] == {
        "scaled_to_zero": True,
        "cold_start_s": 40.0,
        "cold_start_measured": False,
    }


def test_a_request_to_a_cold_profile_that_cannot_make_it_gets_503_retry_after(
    tiny_args, client_for
):
    from clipfleet.config import clip_deployment_name
    from tests.support.local_dag import build_local_service

    service = build_local_service(tiny_args)
    client = client_for(service)
    cold = clip_deployment_name("accurate")
    starts, woken = cold_starts({cold: 0}, estimate_s=service.args.limits.request_timeout_s)
    service.fleet.cold_starts = starts
    response = client.post("/v1/embed/text", json={"texts": ["x"], "profile": "accurate"})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(int(service.args.limits.request_timeout_s))
    assert response.json()["error"]["param"] == "profile"
    assert woken == [cold]
    warm = client.post("/v1/embed/text", json={"texts": ["x"], "profile": "fast"})
    assert warm.status_code == 200

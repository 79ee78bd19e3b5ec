"""What an ingress replica runs beside its routes (clipfleet/ingress/runtime.py), without Ray:
the readiness view and gauge refresher start once, reconfigure applies traffic and starts the
sync, and the app built for the service serves from that view."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from clipfleet.api.app import create_app
from clipfleet.ingress.graph import Graph
from clipfleet.ingress.runtime import IngressRuntime, replica_service
from clipfleet.rollout.store import MemoryStore
from tests.support.local_dag import build_local_service


class FakeView:
    """A readiness view that reads no Serve controller."""

    def __init__(self, checks: dict) -> None:
        self.checks = checks
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def current(self) -> tuple[bool, dict]:
        return True, {key: {"ready": True} for key in self.checks}

    def running(self, deployment: str) -> int | None:
        return None


@pytest.fixture
def runtime(tiny_args):
    return IngressRuntime(build_local_service(tiny_args), make_view=FakeView)


def test_start_is_once_and_reconfigure_applies_traffic(runtime):
    async def scenario():
        runtime.start()
        runtime.start()
        assert runtime.service.fleet.readiness_view.started == 1 and len(runtime.tasks) == 1
        assert runtime.traffic_sync is None  # no user_config yet: nothing to sync
        await runtime.reconfigure({"weights": {"fast": {"stable": 1.0}}})
        sync = runtime.traffic_sync
        assert sync is not None and not sync.done()
        await runtime.reconfigure({})
        assert runtime.traffic_sync is sync and len(runtime.tasks) == 1
        runtime.stop()
        await asyncio.sleep(0)
        assert all(task.cancelled() for task in [*runtime.tasks, sync])

    asyncio.run(scenario())


def test_reconfigure_rejects_unknown_variants(runtime):
    with pytest.raises(ValueError, match="no variant"):
        asyncio.run(runtime.reconfigure({"weights": {"fast": {"nope": 1.0}}}))


def test_checks_name_every_deployment(runtime):
    asyncio.run(_started(runtime))
    checks = runtime.service.fleet.readiness_view.checks
    assert {"image_fetcher", "scorer", "fast.clip", "fast.resnet"} <= set(checks)
    assert checks["scorer"][0] == "Scorer"


async def _started(runtime: IngressRuntime) -> None:
    runtime.start()
    runtime.stop()


def test_readyz_reads_the_runtimes_view(runtime):
    asyncio.run(_started(runtime))
    with TestClient(create_app(runtime.service)) as client:
        body = client.get("/readyz").json()
    assert body["status"] == "ready" and set(body["deployments"]) == set(
        runtime.service.fleet.readiness_view.checks
    )


def test_replica_service_wraps_the_graphs_handles(tiny_args):
    local = build_local_service(tiny_args)
    graph = Graph(
        local.fetcher,
        local.scorer,
        {name: profile.clip for name, profile in local.profiles.items()},
        {name: profile.resnet for name, profile in local.profiles.items()},
        {},
    )
    service = replica_service(tiny_args, graph, MemoryStore(), "app", "r1")
    # each call (fetches too) carries the request's class
    assert service.fetcher._handle is local.fetcher and not service.multiplexed.handles
    clip = service.profiles["fast"].clip
    assert {v: h._handle for v, h in clip.items()} == local.profiles["fast"].clip
    assert service.traffic.shared_state()["replica"] == "r1"

"""`/readyz`'s cached view: the controller's replica states, never a call per probe."""

from __future__ import annotations

import asyncio

from clipfleet.ingress.readiness import STALE_AFTER_S, ReadinessView
from tests.support.clock import Clock


def states(running: dict[str, int], scaled_to_zero: tuple[str, ...] = ()):
    """What Serve reports: a deployment starting its replicas is UPDATING; one scaled to zero
    (min_replicas 0) is HEALTHY with none."""
    deployments = {
        name: {
            "status": "HEALTHY" if count or name in scaled_to_zero else "UPDATING",
            "replicas": {"RUNNING": count},
        }
        for name, count in running.items()
    }
    return lambda: ("app", deployments)


def test_ready_when_every_deployment_runs_a_replica_and_probes_call_nobody():
    calls = []

    async def describe():
        calls.append(1)
        return {"model": "tiny", "device": "cpu", "replica_id": "x"}

    async def scenario():
        clock = Clock()
        checks = {"scorer": ("Scorer", describe), "fast.clip": ("clip_fast", describe)}
        view = ReadinessView(checks, states({"Scorer": 1, "clip_fast": 0}), clock)
        assert view.current()[0] is False  # nothing read yet
        await view.refresh()
        ready, status = view.current()
        assert not ready and status["fast.clip"]["ready"] is False
        view._states = states({"Scorer": 2, "clip_fast": 1})
        await view.refresh()
        ready, status = view.current()
        assert ready and status["fast.clip"]["model"] == "tiny"
        described = len(calls)
        for _ in range(100):  # probes answer from the view
            assert view.current()[0]
        await view.refresh()
        assert len(calls) == described  # what is deployed is asked once
        clock.now += STALE_AFTER_S + 1  # the controller stopped answering
        assert view.current()[0] is False

    asyncio.run(scenario())


def test_replica_states_are_counted_from_the_controllers_details(monkeypatch):
    """serve_state reads the controller's JSON details as they come (the REST API's schema),
    without serve.status()'s pydantic parse (which cloudpickles each deployment's router)."""
    import ray.serve.context as serve_context

    from clipfleet.ingress import serve_state

    details = {
        "applications": {
            "clipfleet": {
                "deployments": {
                    "Scorer": {"status": "HEALTHY", "replicas": [{"state": "RUNNING"}]},
                    "clip_fast": {
                        "status": "UPDATING",
                        "message": "1 replica starting",
                        "replicas": [{"state": "RUNNING"}, {"state": "STARTING"}],
                    },
                }
            },
            "other": {"deployments": {"X": {"status": "HEALTHY", "replicas": []}}},
        }
    }

    class Client:
        def get_serve_details(self):
            return details

    class Replica:
        app_name = "clipfleet"

    monkeypatch.setattr(serve_context, "_get_internal_replica_context", lambda: Replica())
    monkeypatch.setattr(serve_context, "_get_global_client", lambda **_: Client())
    app, deployments = serve_state.deployment_states()
    assert app == "clipfleet"
    assert deployments == {
        "Scorer": {"status": "HEALTHY", "message": "", "replicas": {"RUNNING": 1}},
        "clip_fast": {
            "status": "UPDATING",
            "message": "1 replica starting",
            "replicas": {"RUNNING": 1, "STARTING": 1},
        },
    }
    assert serve_state.running_replicas(deployments, "clip_fast") == 1


def test_a_deployment_scaled_to_zero_is_ready_and_never_described():
    calls = []

    async def describe():
        calls.append(1)  # would start a replica of a scaled-to-zero deployment
        return {"model": "tiny"}

    async def scenario():
        checks = {"scorer": ("Scorer", describe), "fast.clip": ("clip_fast", describe)}
        running = {"Scorer": 1, "clip_fast": 0}
        view = ReadinessView(checks, states(running, scaled_to_zero=("clip_fast",)), Clock())
        assert view.running("clip_fast") is None  # not known before the first look
        await view.refresh()
        ready, status = view.current()
        assert ready and status["fast.clip"]["scaled_to_zero"] is True
        assert view.running("clip_fast") == 0 and view.running("Scorer") == 1
        assert len(calls) == 1  # the scorer only

    asyncio.run(scenario())

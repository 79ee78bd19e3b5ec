"""`/readyz`'s cached view: the controller's replica states, never a call per probe."""

from __future__ import annotations

import asyncio

from clipfleet.readiness import STALE_AFTER_S, ReadinessView


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def states(running: dict[str, int]):
    deployments = {
        name: {"status": "HEALTHY", "replicas": {"RUNNING": count}}
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

    from clipfleet import serve_state

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

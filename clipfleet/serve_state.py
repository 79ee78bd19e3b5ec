"""What the Serve controller says about this application's deployments, asked from a replica.

`serve.status()` is one controller call for the whole application (replica counts by state per
deployment), however many replicas there are; it blocks, so callers run it on a worker thread.
"""

from __future__ import annotations

from typing import Any


def deployment_states() -> tuple[str | None, dict[str, dict] | None]:
    """(application, {deployment: {status, message, replicas: {state: count}}}); (None, None)
    outside a Serve replica (the Ray-free local graph)."""
    from ray.serve.context import _get_internal_replica_context

    replica = _get_internal_replica_context()
    if replica is None:
        return None, None
    from ray import serve

    application = serve.status().applications.get(replica.app_name)
    deployments = application.deployments if application else {}
    return replica.app_name, {
        name: {
            "status": _text(state.status),
            "message": state.message,
            "replicas": {_text(key): count for key, count in state.replica_states.items()},
        }
        for name, state in deployments.items()
    }


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


def running_replicas(deployments: dict[str, dict] | None, name: str) -> int | None:
    if deployments is None or name not in deployments:
        return None
    return deployments[name]["replicas"].get("RUNNING", 0)

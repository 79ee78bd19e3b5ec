"""What the Serve controller says about this application's deployments, asked from a replica.

One controller call for the whole application (replica counts by state per deployment), however
many replicas there are; it blocks, so callers run it on a worker thread. It reads the
controller's JSON details (the schema of Serve's REST API, `ServeInstanceDetails`) as the dict
they arrive as: `serve.status()` returns the same counts but first parses that dict into
pydantic models, which cloudpickles every deployment's request-router class, a fifth of a busy
ingress's CPU when the readiness view refreshed every second (loadtests/cpu_breakdown.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def deployment_states() -> tuple[str | None, dict[str, dict] | None]:
    """(application, {deployment: {status, message, replicas: {state: count}}}); (None, None)
    outside a Serve replica (the Ray-free local graph)."""
    from ray.serve.context import _get_internal_replica_context

    replica = _get_internal_replica_context()
    if replica is None:
        return None, None
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    details = client.get_serve_details() if client is not None else {}
    application = (details.get("applications") or {}).get(replica.app_name) or {}
    return replica.app_name, {
        name: {
            "status": _text(state.get("status")),
            "message": state.get("message") or "",
            "replicas": dict(Counter(_text(r.get("state")) for r in state.get("replicas") or [])),
        }
        for name, state in (application.get("deployments") or {}).items()
    }


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


def running_replicas(deployments: dict[str, dict] | None, name: str) -> int | None:
    if deployments is None or name not in deployments:
        return None
    return deployments[name]["replicas"].get("RUNNING", 0)

"""The replica context every shell passes to its plain class (kept light: no torch here)."""

from __future__ import annotations

from ray import serve


def replica_id() -> str:
    return serve.get_replica_context().replica_id.unique_id

"""The ingress replica's service object, for routes declared outside the deployment class.

The ingress sets it in its constructor; routes get it with `Depends(get_service)`. One ingress
replica per process, so a process-wide slot is enough (and it survives Serve pickling the app).
"""

from __future__ import annotations

from clipfleet.errors import ServiceUnavailableError
from clipfleet.service import ClipfleetService

_service: ClipfleetService | None = None


def set_service(service: ClipfleetService | None) -> None:
    global _service
    _service = service


async def get_service() -> ClipfleetService:
    """A coroutine, so FastAPI resolves it on the event loop (a plain function would be run in
    its thread pool on every request)."""
    return service_or_unavailable()


def service_or_unavailable() -> ClipfleetService:
    if _service is None:
        raise ServiceUnavailableError("the service is starting; retry shortly")
    return _service


def current_service() -> ClipfleetService | None:
    return _service

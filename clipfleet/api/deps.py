"""What routes get from the app they are served by: `create_app(service)` keeps the service
and the API key store in `app.state`."""

from __future__ import annotations

from fastapi import Request

from clipfleet.api.middleware.auth import KeyStore
from clipfleet.ingress.service import ClipfleetService


async def get_service(request: Request) -> ClipfleetService:
    """A coroutine, so FastAPI resolves it on the event loop (a plain function would be run in
    its thread pool on every request)."""
    return request.app.state.service


def key_store(request: Request) -> KeyStore:
    return request.app.state.key_store

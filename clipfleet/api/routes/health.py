"""Liveness and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from clipfleet.api.deps import get_service, key_store
from clipfleet.api.middleware.auth import presented_key
from clipfleet.ingress.service import ClipfleetService

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the ingress process answers. Says nothing about the models."""
    return {"status": "ok"}


def may_see_details(request: Request) -> bool:
    """With API keys configured, only a caller with a valid key sees what is deployed."""
    store = key_store(request)
    digests = store.digests()
    if digests is None:
        return True
    key = presented_key({k.lower(): v for k, v in request.headers.raw})
    return key is not None and store.matches(key, digests)


@router.get("/readyz")
async def readyz(
    request: Request, service: Annotated[ClipfleetService, Depends(get_service)]
) -> JSONResponse:
    """503 until every deployment has a running replica (encoders: warmed up). Answered from a
    view refreshed in the background, so a busy application stays ready."""
    ready, deployments = await service.fleet.readiness()
    body = {
        "status": "ready" if ready else "not_ready",
        "model": service.profile(None).clip_label,  # seed 004's {status, model}
    }
    if may_see_details(request):
        body["random_weights"] = any(e.get("random_weights") for e in deployments.values())
        body["deployments"] = deployments
    headers = None if ready else {"Retry-After": "5"}
    return JSONResponse(status_code=200 if ready else 503, content=body, headers=headers)

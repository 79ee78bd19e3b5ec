"""Liveness and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from clipfleet.api.deps import get_service
from clipfleet.service import ClipfleetService

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the ingress process answers. Says nothing about the models."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: Annotated[ClipfleetService, Depends(get_service)]) -> JSONResponse:
    """503 until every deployment answers and every encoder has run a real forward pass."""
    ready, deployments = await service.readiness()
    body = {
        "status": "ready" if ready else "not_ready",
        "model": service.profile(None).clip_label,  # seed 004's {status, model}
        "random_weights": any(entry.get("random_weights") for entry in deployments.values()),
        "deployments": deployments,
    }
    headers = None if ready else {"Retry-After": "5"}
    return JSONResponse(status_code=200 if ready else 503, content=body, headers=headers)

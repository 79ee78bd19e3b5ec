"""What every route module shares: the error responses it documents, the service, routing and
model-header dependencies, and `resolved`: the target a request is served by, resolved once
(clipfleet/ingress/targets.py) and recorded for the headers that name it (clipfleet/api/app.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from clipfleet.api.deps import get_service
from clipfleet.api.schemas.v1 import ErrorResponse
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.targets import MODEL_HEADER, VARIANT_HEADER, Routing, Target
from clipfleet.modelref import MAX_MODEL_REF_CHARS

ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 404, 413, 415, 422, 502, 503, 504)}
Service = Annotated[ClipfleetService, Depends(get_service)]
SERVED_STATE = "served"  # request.state's slot for the target that serves the request


async def routing_of(
    request: Request,
    route_key: Annotated[
        str | None,
        Header(alias="X-Clipfleet-Route-Key", max_length=256, description="sticky canary key"),
    ] = None,
    variant: Annotated[
        str | None,
        Header(alias=VARIANT_HEADER, max_length=32, description="pin a variant"),
    ] = None,
) -> Routing:
    # Without a route key, a client's API key (its fingerprint, set by the auth middleware)
    # keeps it on one canary variant.
    key = route_key or getattr(request.state, "api_key_id", None)
    return Routing(key=key, variant=variant)


Route = Annotated[Routing, Depends(routing_of)]


async def model_header(
    model: Annotated[
        str | None,
        Header(
            alias=MODEL_HEADER,
            max_length=MAX_MODEL_REF_CHARS,
            description="<profile>, <profile>/<variant> or <profile>:<model-id>",
        ),
    ] = None,
) -> str | None:
    return model


ModelHeader = Annotated[str | None, Depends(model_header)]


def resolved(
    request: Request,
    service: ClipfleetService,
    asked: tuple[str | None, Routing],
    encoder: str = "clip",
) -> Target:
    """The target that serves the request (`asked`: a profile name and routing, as
    `service.targets.requested` / `named` read them), recorded so that the response, or its
    error, names it in its headers."""
    target = service.targets.resolve(*asked, encoder)
    setattr(request.state, SERVED_STATE, target)
    return target

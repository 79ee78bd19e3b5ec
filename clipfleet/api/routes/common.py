"""What every route module shares: the error responses it documents, the service and routing
dependencies, and the headers that say what served a request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, Response

from clipfleet.api.deps import get_service
from clipfleet.api.schemas.v1 import ErrorResponse
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.targets import Routing

ERRORS = {code: {"model": ErrorResponse} for code in (400, 403, 404, 413, 415, 422, 502, 503, 504)}
Service = Annotated[ClipfleetService, Depends(get_service)]
PROFILE_HEADER = "X-Clipfleet-Profile"
VARIANT_HEADER = "X-Clipfleet-Variant"


async def routing_of(
    request: Request,
    route_key: Annotated[
        str | None,
        Header(alias="X-Clipfleet-Route-Key", max_length=256, description="sticky canary key"),
    ] = None,
    variant: Annotated[
        str | None,
        Header(alias="X-Clipfleet-Variant", max_length=32, description="pin a variant"),
    ] = None,
) -> Routing:
    # Without a route key, a client's API key (its fingerprint, set by the auth middleware)
    # keeps it on one canary variant.
    key = route_key or getattr(request.state, "api_key_id", None)
    return Routing(key=key, variant=variant)


Route = Annotated[Routing, Depends(routing_of)]


def served_headers(response: Response, result: dict) -> dict:
    """Name the profile and variant that served `result` in the response's headers."""
    response.headers[PROFILE_HEADER] = result["profile"]
    response.headers[VARIANT_HEADER] = result["variant"]
    return result

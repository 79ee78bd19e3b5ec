"""The FastAPI app served by the ingress deployment."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipfleet.api import compat, routes_health, routes_status, routes_v1
from clipfleet.api.auth import AuthMiddleware
from clipfleet.api.errors import error_response, handle_exception
from clipfleet.api.middleware import (
    BodyLimitMiddleware,
    ConfiguredCorsMiddleware,
    DeadlineMiddleware,
    ServeRejectionMiddleware,
)
from clipfleet.observability.http import ObservabilityMiddleware

REQUEST_ID_HEADER = "X-Request-ID"
_MAX_REQUEST_ID = 128


def create_app() -> FastAPI:
    app = FastAPI(
        title="clipfleet",
        version="0.1.0",
        description="CLIP and ResNet embeddings, CLIP scores and zero-shot tags on Ray Serve.",
    )
    app.include_router(routes_health.router)
    app.include_router(routes_v1.router)
    app.include_router(routes_status.router)
    for compat_router in compat.routers:  # the five seeds' drop-in routes (issue 8)
        app.include_router(compat_router)
    app.add_exception_handler(RequestValidationError, handle_exception)
    app.add_exception_handler(StarletteHTTPException, handle_exception)
    # Innermost first: Serve's plain 503s as envelopes, body limit, API keys, deadline, request
    # context (ids, errors), and CORS outermost so preflights and errors carry its headers.
    app.add_middleware(ServeRejectionMiddleware)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AuthMiddleware)
    app.add_middleware(DeadlineMiddleware)

    @app.middleware("http")
    async def request_context(request: Request, call_next) -> JSONResponse:
        # Ray Serve's proxy assigns X-Request-ID (honouring the client's) and returns it.
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming[:_MAX_REQUEST_ID] if incoming.isprintable() and incoming else ""
        request.state.request_id = request_id or uuid.uuid4().hex
        try:
            response = await call_next(request)
        except Exception as exc:  # every error leaves through the one envelope
            response = error_response(request, exc)
        if REQUEST_ID_HEADER not in response.headers and not incoming:
            response.headers[REQUEST_ID_HEADER] = request.state.request_id
        return response

    app.add_middleware(ConfiguredCorsMiddleware)
    app.add_middleware(ObservabilityMiddleware)  # outermost: metrics, request span, log line
    return app

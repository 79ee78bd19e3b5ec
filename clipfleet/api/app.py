"""The FastAPI app served by the ingress deployment, built on its replica with its service."""

from __future__ import annotations

import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from clipfleet.api import compat
from clipfleet.api.encoding import served_headers
from clipfleet.api.errors import error_response, handle_exception
from clipfleet.api.middleware.admission import AdmissionMiddleware
from clipfleet.api.middleware.auth import AuthMiddleware, KeyStore, declared_api_key
from clipfleet.api.middleware.base import HttpMiddleware
from clipfleet.api.middleware.bounds import (
    BodyLimitMiddleware,
    DeadlineMiddleware,
    ServeRejectionMiddleware,
    cors_middleware,
)
from clipfleet.api.middleware.priority import PriorityMiddleware
from clipfleet.api.openapi import stable_openapi
from clipfleet.api.routes import cohere as routes_cohere
from clipfleet.api.routes import health as routes_health
from clipfleet.api.routes import openai as routes_openai
from clipfleet.api.routes import rerank as routes_rerank
from clipfleet.api.routes import status as routes_status
from clipfleet.api.routes import v1 as routes_v1
from clipfleet.api.routes.common import SERVED_STATE
from clipfleet.ingress.service import ClipfleetService
from clipfleet.observability.http import ObservabilityMiddleware

REQUEST_ID_HEADER = "X-Request-ID"
_MAX_REQUEST_ID = 128


class RequestContextMiddleware(HttpMiddleware):
    """Gives each request an id (`request.state.request_id`, echoed as X-Request-ID when the
    client sent none), names the target that served it (`request.state.served`, recorded by
    clipfleet.api.routes.common.resolved) in every response's headers, errors included, and
    turns any exception that escapes the app into the one error envelope.
    Pure ASGI: Starlette's `@app.middleware("http")` would run the app in a separate task and
    stream the response through a queue, on every request."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Ray Serve's proxy assigns X-Request-ID (honouring the client's) and returns it.
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = incoming[:_MAX_REQUEST_ID] if incoming.isprintable() and incoming else ""
        scope.setdefault("state", {})["request_id"] = request_id or uuid.uuid4().hex
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if not incoming and REQUEST_ID_HEADER not in headers:
                    headers[REQUEST_ID_HEADER] = scope["state"]["request_id"]
                served = scope["state"].get(SERVED_STATE)
                if served is not None:
                    headers.update(served_headers(served))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # every error leaves through the one envelope
            if started:
                raise
            await error_response(Request(scope, receive), exc)(scope, receive, send_with_id)


def create_app(service: ClipfleetService) -> FastAPI:
    """The app for `service`: routes read it (and the key store) from `app.state`; middleware
    is given its settings from `service.args` here."""
    app = FastAPI(
        title="clipfleet",
        version="0.1.0",
        description="CLIP and ResNet embeddings, CLIP scores and zero-shot tags on Ray Serve.",
    )
    args = service.args
    app.state.service = service
    app.state.key_store = KeyStore(args.auth)
    keyed = [Depends(declared_api_key)]  # declares the API key schemes in the OpenAPI schema
    app.include_router(routes_health.router)
    app.include_router(routes_v1.router, dependencies=keyed)
    app.include_router(routes_openai.router, dependencies=keyed)
    app.include_router(routes_cohere.router, dependencies=keyed)  # the peers' shapes (issue 24)
    app.include_router(routes_rerank.router, dependencies=keyed)
    app.include_router(routes_status.router, dependencies=keyed)
    for compat_router in compat.routers:  # the five seeds' drop-in routes (issue 8)
        app.include_router(compat_router, dependencies=keyed)
    app.openapi = stable_openapi(app)  # the component names clients generated code from
    app.add_exception_handler(RequestValidationError, handle_exception)
    app.add_exception_handler(StarletteHTTPException, handle_exception)
    # Innermost first: Serve's plain 503s as envelopes, body limit, API keys, deadline, request
    # context (ids, errors), and CORS outermost so preflights and errors carry its headers.
    app.add_middleware(ServeRejectionMiddleware)
    app.add_middleware(BodyLimitMiddleware, args.limits)
    app.add_middleware(AdmissionMiddleware, args.limits)  # shed what could not finish in time
    app.add_middleware(PriorityMiddleware, args.auth)  # the class admission and encoders use
    app.add_middleware(AuthMiddleware, app.state.key_store)
    app.add_middleware(DeadlineMiddleware, args.limits)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(cors_middleware, args.cors)
    app.add_middleware(ObservabilityMiddleware)  # outermost: metrics, request span, log line
    return app

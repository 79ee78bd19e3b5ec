"""ASGI middleware configured from the live AppArgs: body limit, request deadline, CORS.

The FastAPI app is built when the ingress module is imported, before the application's args
are known, so these read their settings from the ingress's service on each request.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipfleet.api import deps
from clipfleet.api.errors import RETRY_AFTER_S, envelope
from clipfleet.asgi import HttpMiddleware
from clipfleet.config import ApiLimits, CorsConfig


def api_limits() -> ApiLimits:
    service = deps.current_service()
    return service.args.limits if service is not None else ApiLimits()


def _too_large(size: str, limit: int) -> str:
    return f"the request body is {size} bytes; the limit is {limit}"


class BodyLimitMiddleware(HttpMiddleware):
    """413 for a body over `limits.max_body_bytes`: up front from Content-Length, and while
    streaming for chunked bodies (or lying Content-Lengths) by counting what `receive` yields."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = api_limits().max_body_bytes
        declared = dict(scope.get("headers", ())).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            response = envelope(413, "payload_too_large", _too_large(declared, limit))
            await response(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit), send)


def _counting(receive: Receive, limit: int) -> Receive:
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                # FastAPI re-raises HTTPException from body reading; the handler renders it.
                raise HTTPException(413, _too_large(f"more than {limit}", limit))
        return message

    return counted


class ServeRejectionMiddleware(HttpMiddleware):
    """Ray Serve registers its own FastAPI handlers for BackPressureError and
    DeploymentUnavailableError (a plain-text 503); this turns those into the envelope,
    keeping their Retry-After (always sending one)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and _plain_503(message):
                replaced = True
                headers = dict(message.get("headers", ()))
                retry = headers.get(b"retry-after", str(RETRY_AFTER_S).encode()).decode()
                text = "the service is at capacity or a deployment is unavailable; retry shortly"
                response = envelope(
                    503, "service_unavailable", text, headers={"Retry-After": retry}
                )
                await response(scope, receive, send)
            elif not replaced:
                await send(message)

        await self.app(scope, receive, guarded_send)


def _plain_503(message: Message) -> bool:
    content_type = dict(message.get("headers", ())).get(b"content-type", b"")
    return message["status"] == 503 and not content_type.startswith(b"application/json")


class DeadlineMiddleware(HttpMiddleware):
    """504 once a request has run for `limits.request_timeout_s`; the work is cancelled (and
    with it the downstream deployment calls). Runs the app itself, with no task in between,
    so the cancellation reaches it."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout_s = api_limits().request_timeout_s
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not deadline.expired() or started:
                raise
            message = f"the request did not complete within {timeout_s} s"
            await envelope(504, "request_timeout", message)(scope, receive, send)


class ConfiguredCorsMiddleware(HttpMiddleware):
    """Starlette's CORSMiddleware with the service's `cors` settings; off without origins."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self._built: dict[CorsConfig, ASGIApp] = {}

    def _for(self, config: CorsConfig) -> ASGIApp:
        if config not in self._built:
            self._built[config] = CORSMiddleware(
                self.app,
                allow_origins=list(config.allow_origins),
                allow_methods=list(config.allow_methods),
                allow_headers=list(config.allow_headers),
                allow_credentials=config.allow_credentials,
                expose_headers=["X-Request-ID", "X-Clipfleet-Profile", "X-Clipfleet-Variant"],
                max_age=config.max_age_s,
            )
        return self._built[config]

    @staticmethod
    def _config() -> CorsConfig:
        service = deps.current_service()
        return service.args.cors if service is not None else CorsConfig()

    def passes_through(self, scope: Scope) -> bool:
        return not self._config().allow_origins

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._for(self._config())(scope, receive, send)

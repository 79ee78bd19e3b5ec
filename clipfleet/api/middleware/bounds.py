"""ASGI middleware, each given its settings from the service's AppArgs when the app is built:
body limit, request deadline, Serve's plain 503s, CORS. (The args are fixed for a replica's
life; only traffic weights change live, and no middleware reads them.)
"""

from __future__ import annotations

import asyncio
import math

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipfleet.api.errors import render
from clipfleet.api.limits import ApiLimits
from clipfleet.api.middleware.base import HttpMiddleware
from clipfleet.api.schemas.v1 import HARD_MAX_ITEMS
from clipfleet.api.settings import CorsConfig
from clipfleet.errors import (
    RETRY_AFTER_S,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceUnavailableError,
)


def _too_large(size: str, limit: int) -> str:
    return f"the request body is {size} bytes; the limit is {limit}"


class BodyLimitMiddleware(HttpMiddleware):
    """413 for a body over `limits.max_body_bytes`: up front from Content-Length, and while
    streaming for chunked bodies (or lying Content-Lengths) by counting what `receive` yields.

    A JSON body is also refused while it streams in once it holds more values (counted by their
    separators, `,` `[` `{`, strings included) than any request a route takes: 31 MB of `{},`
    under the byte limit would otherwise become ten million Python objects (+800 MB, 13 s)
    before the schema refuses it. The bound: 16 per item of the largest list a schema allows,
    plus a separator per character of the texts a request may send (limits.max_prompt_chars)."""

    def __init__(self, app: ASGIApp, limits: ApiLimits) -> None:
        super().__init__(app)
        self.limit = limits.max_body_bytes
        self.max_json_values = 16 * HARD_MAX_ITEMS + limits.prompt_char_budget

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            error = PayloadTooLargeError(_too_large(declared, limit))
            await render(error)(scope, receive, send)
            return
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        is_json = media_type == b"application/json" or media_type.endswith(b"+json")
        values = self.max_json_values if is_json else None
        await self.app(scope, _counting(receive, limit, values), send)


def _counting(receive: Receive, limit: int, max_json_values: int | None) -> Receive:
    received = values = 0

    async def counted() -> Message:
        nonlocal received, values
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            received += len(body)
            # FastAPI re-raises HTTPException from body reading; the handler renders it.
            if received > limit:
                raise HTTPException(413, _too_large(f"more than {limit}", limit))
            if max_json_values is not None:
                values += body.count(b",") + body.count(b"[") + body.count(b"{")
                if values > max_json_values:
                    raise HTTPException(
                        413,
                        f"the JSON body holds more than {max_json_values} values; no request "
                        "needs that many",
                    )
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
                text = "the service is at capacity or a deployment is unavailable; retry shortly"
                error = ServiceUnavailableError(text, retry_after_s=_retry_after(message))
                await render(error)(scope, receive, send)
            elif not replaced:
                await send(message)

        await self.app(scope, receive, guarded_send)


def _retry_after(message: Message) -> int:
    headers = dict(message.get("headers", ()))
    try:
        return max(1, math.ceil(float(headers[b"retry-after"])))
    except (KeyError, ValueError):
        return RETRY_AFTER_S


def _plain_503(message: Message) -> bool:
    content_type = dict(message.get("headers", ())).get(b"content-type", b"")
    return message["status"] == 503 and not content_type.startswith(b"application/json")


class DeadlineMiddleware(HttpMiddleware):
    """504 once a request has run for `limits.request_timeout_s`; the work is cancelled (and
    with it the downstream deployment calls). Runs the app itself, with no task in between,
    so the cancellation reaches it."""

    def __init__(self, app: ASGIApp, limits: ApiLimits) -> None:
        super().__init__(app)
        self.timeout_s = limits.request_timeout_s

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout_s = self.timeout_s
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
            error = RequestTimeoutError(f"the request did not complete within {timeout_s} s")
            await render(error)(scope, receive, send)


def cors_middleware(app: ASGIApp, config: CorsConfig) -> ASGIApp:
    """Starlette's CORSMiddleware with the `cors` settings; none (the app itself) without
    origins."""
    if not config.allow_origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=list(config.allow_origins),
        allow_methods=list(config.allow_methods),
        allow_headers=list(config.allow_headers),
        allow_credentials=config.allow_credentials,
        expose_headers=[
            *("X-Request-ID", "X-Clipfleet-Profile", "X-Clipfleet-Variant"),
            "X-Clipfleet-Shed",
        ],
        max_age=config.max_age_s,
    )

"""503 + Retry-After at once for work (POST) requests that could not be served in time, and
the cap on bulk requests running at once."""

from __future__ import annotations

import asyncio
import math

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipfleet.api.errors import render
from clipfleet.api.middleware.base import HttpMiddleware
from clipfleet.api.middleware.priority import request_class
from clipfleet.config import ApiLimits
from clipfleet.errors import ServiceUnavailableError
from clipfleet.ingress.admission import Admission
from clipfleet.ingress.priority import BULK

SHED_HEADER = "X-Clipfleet-Shed"  # on this middleware's 503s: not Serve's own queues


class AdmissionMiddleware(HttpMiddleware):
    """Health, status and model listings (GET) are never shed. Bulk requests are shed once
    the expected wait passes `limits.bulk_shed_ratio` of the interactive limit: under overload
    bulk goes first. Its 503s carry
    `X-Clipfleet-Shed: admission`, so they can be told from a full Serve queue's.

    At most `limits.bulk_in_flight` bulk requests run at once (first come, first served, before
    their bodies are read): one over it waits up to the bulk limit for a turn, then gets a 503
    with `X-Clipfleet-Shed: bulk`. Waiting bulk requests are not in flight for admission, so they
    make no interactive request look late."""

    def __init__(self, app: ASGIApp, limits: ApiLimits) -> None:
        super().__init__(app)
        self.admission = Admission()
        self.max_wait_s = limits.admission_wait_s
        self.bulk_max_wait_s = limits.bulk_wait_s
        cap = limits.bulk_in_flight
        self.bulk_slots = asyncio.Semaphore(cap) if cap is not None else None

    def passes_through(self, scope: Scope) -> bool:
        return scope.get("method") != "POST"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if request_class(scope) != BULK or self.bulk_slots is None:
            await self.admitted(scope, receive, send, self.max_wait_s)
            return
        try:
            await asyncio.wait_for(self.bulk_slots.acquire(), self.bulk_max_wait_s)
        except TimeoutError:
            retry_after = max(1, math.ceil(self.bulk_max_wait_s))
            await shed(scope, receive, send, retry_after, "bulk")
            return
        try:
            await self.admitted(scope, receive, send, self.bulk_max_wait_s)
        finally:
            self.bulk_slots.release()

    async def admitted(self, scope: Scope, receive: Receive, send: Send, max_wait_s: float) -> None:
        """The request, unless admission expects it to wait longer than `max_wait_s`."""
        retry_after = self.admission.admit(max_wait_s)
        if retry_after is not None:
            await shed(scope, receive, send, int(retry_after), "admission")
            return
        started = self.admission.started()
        status = 500

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            self.admission.done(started, served=status < 300)


async def shed(scope: Scope, receive: Receive, send: Send, retry_after: int, why: str) -> None:
    message = "the service is at capacity; retry shortly"
    error = ServiceUnavailableError(message, retry_after_s=retry_after)
    await render(error, {SHED_HEADER: why})(scope, receive, send)

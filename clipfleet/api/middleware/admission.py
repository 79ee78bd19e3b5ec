"""503 + Retry-After at once for work (POST) requests that could not be served in time, and
the cap on bulk requests running at once."""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipfleet.api.errors import render
from clipfleet.api.middleware.base import HttpMiddleware
from clipfleet.api.middleware.priority import request_class
from clipfleet.config import ApiLimits
from clipfleet.errors import ServiceUnavailableError
from clipfleet.ingress.admission import BULK_DEADLINE_SHARE, Admission, BulkSlots
from clipfleet.ingress.priority import BULK

SHED_HEADER = "X-Clipfleet-Shed"  # on this middleware's 503s: not Serve's own queues


class AdmissionMiddleware(HttpMiddleware):
    """Health, status and model listings (GET) are never shed. Bulk requests are shed once
    the expected wait passes `limits.bulk_shed_ratio` of the interactive limit: under overload
    bulk goes first. Its 503s carry
    `X-Clipfleet-Shed: admission`, so they can be told from a full Serve queue's.

    At most `limits.bulk_in_flight` bulk requests run at once (before their bodies are read), and
    fewer while the bulk rate measured says one more would not finish within half the request
    deadline (clipfleet.ingress.admission.BulkSlots): one over waits up to the bulk limit for a
    start, then gets a 503 with `X-Clipfleet-Shed: bulk`. Waiting bulk requests are not in
    flight for admission, so they make no interactive request look late."""

    def __init__(self, app: ASGIApp, limits: ApiLimits) -> None:
        super().__init__(app)
        self.admission = Admission()
        self.max_wait_s = limits.admission_wait_s
        self.bulk_max_wait_s = limits.bulk_wait_s
        deadline_s = limits.request_timeout_s * BULK_DEADLINE_SHARE
        self.bulk_slots = BulkSlots(limits.bulk_in_flight, deadline_s)

    def passes_through(self, scope: Scope) -> bool:
        return scope.get("method") != "POST"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if request_class(scope) != BULK:
            await self.admitted(scope, receive, send, self.max_wait_s)
            return
        started = await self.bulk_slots.acquire(self.bulk_max_wait_s)
        if started is None:
            retry_after = max(1, math.ceil(self.bulk_max_wait_s))
            await shed(scope, receive, send, retry_after, "bulk")
            return
        status = 500
        try:
            status = await self.admitted(scope, receive, send, self.bulk_max_wait_s)
        finally:
            self.bulk_slots.release(started, measured=status < 300 or status == 504)

    async def admitted(self, scope: Scope, receive: Receive, send: Send, max_wait_s: float) -> int:
        """The request, unless admission expects it to wait longer than `max_wait_s`; its
        response's status."""
        retry_after = self.admission.admit(max_wait_s)
        if retry_after is not None:
            await shed(scope, receive, send, int(retry_after), "admission")
            return 503
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
        return status


async def shed(scope: Scope, receive: Receive, send: Send, retry_after: int, why: str) -> None:
    message = "the service is at capacity; retry shortly"
    error = ServiceUnavailableError(message, retry_after_s=retry_after)
    await render(error, {SHED_HEADER: why})(scope, receive, send)

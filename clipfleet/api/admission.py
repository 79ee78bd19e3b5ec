"""503 + Retry-After at once for work (POST) requests that could not be served in time."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipfleet.admission import Admission
from clipfleet.api.errors import render
from clipfleet.api.priority import request_class
from clipfleet.asgi import HttpMiddleware
from clipfleet.config import ApiLimits
from clipfleet.errors import ServiceUnavailableError
from clipfleet.priority import BULK

SHED_HEADER = "X-Clipfleet-Shed"  # on this middleware's 503s: not Serve's own queues


class AdmissionMiddleware(HttpMiddleware):
    """Health, status and model listings (GET) are never shed. Bulk requests are shed once
    the expected wait passes `limits.bulk_shed_ratio` of the interactive limit: under overload
    bulk goes first. Its 503s carry
    `X-Clipfleet-Shed: admission`, so they can be told from a full Serve queue's."""

    def __init__(self, app: ASGIApp, limits: ApiLimits) -> None:
        super().__init__(app)
        self.admission = Admission()
        self.max_wait_s = limits.admission_wait_s
        self.bulk_max_wait_s = limits.admission_wait_s * limits.bulk_shed_ratio

    def passes_through(self, scope: Scope) -> bool:
        return scope.get("method") != "POST"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        bulk = request_class(scope) == BULK
        retry_after = self.admission.admit(self.bulk_max_wait_s if bulk else self.max_wait_s)
        if retry_after is not None:
            message = "the service is at capacity; retry shortly"
            error = ServiceUnavailableError(message, retry_after_s=int(retry_after))
            await render(error, {SHED_HEADER: "admission"})(scope, receive, send)
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

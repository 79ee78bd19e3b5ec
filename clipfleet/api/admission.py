"""503 + Retry-After at once for work (POST) requests that could not be served in time."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from clipfleet.admission import Admission
from clipfleet.api.errors import envelope
from clipfleet.api.middleware import api_limits
from clipfleet.asgi import HttpMiddleware


class AdmissionMiddleware(HttpMiddleware):
    """Health, status and model listings (GET) are never shed."""

    def __init__(self, app) -> None:
        super().__init__(app)
        self.admission = Admission()

    def passes_through(self, scope: Scope) -> bool:
        return scope.get("method") != "POST"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = api_limits()
        retry_after = self.admission.admit(limits.admission_wait_s)
        if retry_after is not None:
            message = "the service is at capacity; retry shortly"
            headers = {"Retry-After": str(int(retry_after))}
            await envelope(503, "service_unavailable", message, headers=headers)(
                scope, receive, send
            )
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

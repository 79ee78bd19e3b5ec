"""The request's priority class (clipfleet/ingress/priority.py), decided once, after auth: the
header capped by the key's class. Set as the context variable the handle calls read and as
`request.state.priority` (admission reads it); echoed in the response's X-Clipfleet-Priority."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipfleet.api.errors import render
from clipfleet.api.middleware.auth import STATE_KEY_ID
from clipfleet.api.middleware.base import HttpMiddleware
from clipfleet.api.settings import AuthConfig
from clipfleet.errors import InvalidRequestError
from clipfleet.ingress import priority

STATE_PRIORITY = "priority"
_HEADER_KEY = priority.HEADER.lower().encode()


def request_class(scope: Scope) -> str:
    """The class PriorityMiddleware chose for this request (interactive before it ran)."""
    return scope.get("state", {}).get(STATE_PRIORITY, priority.INTERACTIVE)


class PriorityMiddleware(HttpMiddleware):
    """422 for a header naming no class; otherwise the capped class, for the whole request.
    Work (POST) requests only: health, status and listings have no class."""

    def __init__(self, app: ASGIApp, auth: AuthConfig) -> None:
        super().__init__(app)
        self.auth = auth

    def passes_through(self, scope: Scope) -> bool:
        return scope.get("method") != "POST"

    def allowed(self, key_id: str | None) -> str:
        """The highest class a key may use (keys not listed, and no key: the default)."""
        return self.auth.priorities.get(key_id, self.auth.default_priority)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        raw = dict(scope.get("headers", ())).get(_HEADER_KEY)
        try:
            asked = priority.parse(raw.decode("latin-1") if raw is not None else None)
        except ValueError as exc:
            error = InvalidRequestError(str(exc), priority.HEADER, status=422)
            await render(error)(scope, receive, send)
            return
        chosen = priority.cap(asked, self.allowed(state.get(STATE_KEY_ID)))
        state[STATE_PRIORITY] = chosen

        async def send_with_class(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[priority.HEADER] = chosen
            await send(message)

        token = priority.CURRENT.set(chosen)
        try:
            await self.app(scope, receive, send_with_class)
        finally:
            priority.CURRENT.reset(token)

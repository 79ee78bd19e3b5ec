"""A base for the service's pure-ASGI middlewares (no task between them and the app)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    """Non-HTTP scopes, and HTTP scopes `passes_through` accepts, go straight to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def passes_through(self, scope: Scope) -> bool:
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.passes_through(scope):
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError

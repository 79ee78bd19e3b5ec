"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Keys come from an environment variable (comma-separated) and/or a mounted secrets file (one per
line, `#` comments; re-read when its mtime changes, so rotated secrets apply without a restart).
With no key configured, auth is off. A configured file that cannot be read fails closed: every
protected request is refused until it can be read.

Keys are compared as SHA-256 digests with `hmac.compare_digest` against every configured key
(no early exit). A valid key's fingerprint is left in `request.state.api_key_id`; the v1 routes
use it as the sticky canary routing key when the client sends no X-Clipfleet-Route-Key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from clipfleet.api.errors import render
from clipfleet.api.middleware.base import HttpMiddleware
from clipfleet.api.settings import AuthConfig
from clipfleet.errors import ForbiddenError, UnauthorizedError

logger = logging.getLogger("ray.serve")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
STATE_KEY_ID = "api_key_id"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key: str) -> str:
    """A stable, non-reversible name for a key (logs, canary stickiness)."""
    return "key-" + hashlib.sha256(b"clipfleet-key-id:" + key.encode()).hexdigest()[:16]


@dataclass
class KeyStore:
    """The configured keys' digests; the file is re-read when it changes."""

    config: AuthConfig
    _file_digests: tuple[bytes, ...] = ()
    _file_mtime: float | None = None
    _file_error: bool = False

    def _env_digests(self) -> tuple[bytes, ...]:
        raw = os.environ.get(self.config.api_keys_env, "")
        return tuple(_digest(key.strip()) for key in raw.split(",") if key.strip())

    def _refresh_file(self) -> None:
        path = self.config.api_keys_file
        if not path:
            return
        try:
            mtime = os.stat(path).st_mtime
            if mtime != self._file_mtime:
                with open(path, encoding="utf-8") as handle:
                    lines = [line.strip() for line in handle]
                keys = [line for line in lines if line and not line.startswith("#")]
                self._file_digests = tuple(_digest(key) for key in keys)
                self._file_mtime = mtime
            self._file_error = False
        except OSError as exc:
            if not self._file_error:
                logger.error("cannot read auth.api_keys_file %s: %s", path, exc)
            self._file_error = True

    def digests(self) -> tuple[bytes, ...] | None:
        """None when auth is off; an empty tuple refuses every key (fail closed)."""
        self._refresh_file()
        if self._file_error:
            return ()
        digests = self._env_digests() + self._file_digests
        return digests if digests or self.config.api_keys_file else None

    def matches(self, key: str, digests: tuple[bytes, ...]) -> bool:
        given = _digest(key)
        matched = False
        for digest in digests:  # every key is compared, in constant time each
            matched |= hmac.compare_digest(given, digest)
        return matched


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    authorization = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return api_key or None


def app_path(scope: Scope) -> str:
    """The path inside the app (Serve mounts it under the route prefix, the `root_path`)."""
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class AuthMiddleware(HttpMiddleware):
    """401 without a key, 403 with a wrong one, on every route but OPEN_PATHS."""

    def __init__(self, app: ASGIApp, store: KeyStore) -> None:
        super().__init__(app)
        self.store = store

    def passes_through(self, scope: Scope) -> bool:
        return app_path(scope) in OPEN_PATHS

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        digests = self.store.digests()
        if digests is None:
            await self.app(scope, receive, send)
            return
        key = presented_key(dict(scope.get("headers", ())))
        if key is None:
            error = UnauthorizedError(
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key`"
            )
        elif not self.store.matches(key, digests):
            error = ForbiddenError("the API key is not valid")
        else:
            scope.setdefault("state", {})[STATE_KEY_ID] = key_id(key)
            await self.app(scope, receive, send)
            return
        await render(error)(scope, receive, send)


# The schemes as the OpenAPI schema declares them, so /docs has an Authorize button and
# generated clients send the key. They check nothing (auto_error=False): AuthMiddleware does.
BEARER = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="or `X-API-Key`")


async def declared_api_key(
    bearer: HTTPAuthorizationCredentials | None = Security(BEARER),
    api_key: str | None = Security(API_KEY_HEADER),
) -> None:
    """A route dependency that only declares the schemes (either one) in the schema."""

"""What a hostile request is, and what every replay asserts of its answer: the machinery of
tests/support/hostile_corpus.py (the cases themselves live there, as data)."""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.images import image_bytes

# What no answer may hold, whatever was asked: tracebacks and the libraries' own words.
NEVER = (
    *("Traceback", "aiohttp", "ClientConnector", "starlette", "fastapi", "pydantic"),
    *("Value error,", "Missing boundary", "There was an error parsing", "Method Not Allowed"),
)
# The kinds of address a refusal must not name (one message for all: no DNS oracle).
ADDRESS_KINDS = ("loopback", "link-local", "private address", "points to", "embedding")


@dataclass(frozen=True)
class Attack:
    """A request (path, method, body as JSON, raw bytes or multipart form and files, headers)
    and its expected answer (status, envelope type and param, text it must not hold)."""

    name: str
    path: str
    status: int
    error_type: str | None = None
    param: str | None = None
    method: str = "POST"
    json: Any = None
    content: bytes | Callable[[], bytes] | None = None
    content_type: str | None = None
    form: dict[str, Any] | None = None
    files: dict[str, tuple] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    serve: bool = False  # also replayed against a real Serve (the integration sample)

    def request(self, hostile_base: str) -> dict[str, Any]:
        """Method, path and the parts of the request, `{hostile}` filled in; `content` is raw
        bytes, `form` / `files` multipart fields (httpx and requests take these alike once
        renamed: see `as_httpx` / `as_requests`)."""
        headers = dict(self.headers)
        content = self.content() if callable(self.content) else self.content
        if self.json is not None:
            text = json.dumps(self.json).replace("{hostile}", hostile_base)
            content, headers["content-type"] = text.encode(), "application/json"
        if self.content_type is not None:
            headers["content-type"] = self.content_type
        return {
            "method": self.method,
            "path": self.path,
            "content": content,
            "form": self.form,
            "files": self.files,
            "headers": headers,
        }


def as_httpx(parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": parts["method"],
        "url": parts["path"],
        "content": parts["content"],
        "data": parts["form"],
        "files": parts["files"],
        "headers": parts["headers"],
    }


def as_requests(parts: dict[str, Any], base_url: str) -> dict[str, Any]:
    return {
        "method": parts["method"],
        "url": base_url + parts["path"],
        "data": parts["content"] if parts["content"] is not None else parts["form"],
        "files": parts["files"],
        "headers": parts["headers"],
    }


def check_answer(attack: Attack, status: int, text: str, envelope: dict | None) -> None:
    """What every replay (unit and integration) asserts of an attack's answer."""
    assert status == attack.status, (attack.name, status, text[:300])
    assert status < 500 or (status, attack.error_type) == (504, "upstream_timeout"), attack.name
    if status >= 400:
        error = (envelope or {}).get("error") or {}
        assert error.get("type") == attack.error_type, (attack.name, text[:300])
        if attack.param is not None:
            assert error.get("param") == attack.param, (attack.name, error)
    for phrase in (*NEVER, *attack.absent):
        assert phrase not in text, (attack.name, phrase, text[:300])


def letters(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(count))


def values_bomb(size: int) -> Callable[[], bytes]:
    """`size` bytes of JSON whose list holds size / 3 empty objects (the 31.5 MB attack)."""
    return lambda: b'{"texts": [' + b"{}," * ((size - 16) // 3) + b"{}]}"


def url_safe_image() -> str:
    for seed in range(100):
        text = base64.b64encode(image_bytes(seed=seed)).decode()
        if "+" in text and "/" in text:
            return text.replace("+", "-").replace("/", "_").rstrip("=")
    raise AssertionError("no image with both + and / in its base64")

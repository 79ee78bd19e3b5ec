"""Priority classes: `interactive` (served first) and `bulk` (a guaranteed share, shed first).

A request's class is the one its `X-Clipfleet-Priority` header asks for, capped by what its API
key allows (`auth.priorities`, by key id; keys not listed, and requests when auth is off, get
`auth.default_priority`). A key allowed only `bulk` that asks for `interactive` is served as
bulk, not refused: the response's `X-Clipfleet-Priority` says which class applied.

The class travels as a context variable on the ingress (set by its middleware) and as a
`priority=` keyword on the handle calls that lead to a forward (PriorityHandle); the encoders'
`@prioritized` methods set it on their side, and the per-item hooks tag each item with it
(`Classed`) so the ForwardScheduler can order the forwards (clipfleet/batching.py).
Only `bulk` is sent over the wire: callers and fakes that know nothing of classes are unaffected.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from clipfleet.keyword_handles import KeywordHandle, wrap_handles

INTERACTIVE = "interactive"
BULK = "bulk"
CLASSES = (INTERACTIVE, BULK)  # highest first
PriorityClass = Literal["interactive", "bulk"]
HEADER = "X-Clipfleet-Priority"
KEYWORD = "priority"
# The deployment methods whose callers pass `priority=` (the encoders' embedding methods).
PRIORITY_METHODS = frozenset(
    {"embed_image", "embed_images", "embed_pair", "embed_text", "embed_texts"}
)

CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "clipfleet_priority", default=INTERACTIVE
)


def rank(priority: str) -> int:
    """0 for interactive, 1 for bulk: a lower rank is served first."""
    return CLASSES.index(priority)


def parse(value: str | None) -> str | None:
    """The class a header names (case and spaces ignored); None when absent; ValueError when
    it names no class."""
    if value is None or not value.strip():
        return None
    name = value.strip().lower()
    if name not in CLASSES:
        raise ValueError(f"{HEADER} must be one of {list(CLASSES)}, got {value.strip()!r}")
    return name


def cap(asked: str | None, allowed: str) -> str:
    """The class a request gets: what it asked for, never above what its key allows;
    nothing asked: the key's class."""
    if asked is None:
        return allowed
    return asked if rank(asked) >= rank(allowed) else allowed


@dataclass(frozen=True)
class Classed:
    """One item for the ForwardScheduler with the class it is served in."""

    item: Any
    priority: str = INTERACTIVE


def classed(item: Any) -> Classed:
    """`item` tagged with the current request's class."""
    return Classed(item, CURRENT.get())


def prioritized(function: Callable) -> Callable:
    """Decorate an async deployment method: it accepts `priority=` (the caller's class) and
    runs with it as the current class. Callers that pass none are served as interactive."""
    if function.__name__ not in PRIORITY_METHODS:
        raise ValueError(f"add {function.__name__!r} to PRIORITY_METHODS so handles pass it on")

    @functools.wraps(function)
    async def run(*args, priority: str = INTERACTIVE, **kwargs):
        token = CURRENT.set(priority if priority in CLASSES else INTERACTIVE)
        try:
            return await function(*args, **kwargs)
        finally:
            CURRENT.reset(token)

    return run


def _priority_keywords() -> dict[str, str]:
    priority = CURRENT.get()
    return {} if priority == INTERACTIVE else {KEYWORD: priority}


class PriorityHandle(KeywordHandle):
    """A handle whose embedding calls carry the current request's class (when not the default)."""

    def __init__(self, handle: Any, methods=PRIORITY_METHODS, keywords=_priority_keywords) -> None:
        super().__init__(handle, methods, keywords)


def prioritize_handles(handles: Any) -> Any:
    """Wrap a handle, or the handles in nested dicts and lists, in PriorityHandle."""
    return wrap_handles(handles, PriorityHandle)

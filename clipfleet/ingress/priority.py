"""Priority classes: `interactive` (served first) and `bulk` (a guaranteed share, shed first).

A request's class is the one its `X-Clipfleet-Priority` header asks for, capped by what its API
key allows (`auth.priorities`, by key id; keys not listed, and requests when auth is off, get
`auth.default_priority`). A key allowed only `bulk` that asks for `interactive` is served as
bulk, not refused: the response's `X-Clipfleet-Priority` says which class applied.

The class travels as a context variable on the ingress (set by its middleware) and as a
`priority=` keyword on the handle calls that lead to a forward (PriorityHandle); the encoders'
`@prioritized` methods set it on their side, and the per-item hooks tag each item with it
(`Classed`) so the ForwardScheduler can order the forwards (clipfleet/replicas/batching.py).
Only `bulk` is sent over the wire: callers and fakes that know nothing of classes are unaffected.

`Turns` is the one rule of who goes next (interactive first, bulk a guaranteed share): the
ForwardScheduler applies it to forwards, `ClassedSlots` to the decode threads of an encoder
(inline images) and of the ImageFetcher (image URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from clipfleet.ingress.keyword_handles import KeywordHandle, wrap_handles

INTERACTIVE = "interactive"
BULK = "bulk"
CLASSES = (INTERACTIVE, BULK)  # highest first
PriorityClass = Literal["interactive", "bulk"]
HEADER = "X-Clipfleet-Priority"
KEYWORD = "priority"
# The deployment methods whose callers pass `priority=` (the encoders' embedding methods, and
# the ImageFetcher's fetch: its decodes are classed too).
PRIORITY_METHODS = frozenset(
    {"embed_image", "embed_images", "embed_pair", "embed_text", "embed_texts", "fetch"}
)

DEFAULT_BULK_EVERY = 4
# A parked bulk forward's turn: this long, then interactive work may park it again (the most an
# interactive request waits for a bulk turn; measured in docs/fleet.md#priority-classes).
DEFAULT_BULK_SLICE_S = 0.03

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


class Turns:
    """Which class is served next: interactive first, but while bulk waits at least one turn
    in every `bulk_every` goes to bulk, so a stream of interactive work never starves it."""

    def __init__(self, bulk_every: int = DEFAULT_BULK_EVERY) -> None:
        self.bulk_every = bulk_every
        self.served: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self._since_bulk = 0  # turns given to interactive while bulk waited

    @property
    def bulk_every(self) -> int:
        return self._bulk_every

    @bulk_every.setter
    def bulk_every(self, value: int) -> None:
        if value < 2:
            raise ValueError(f"bulk_every must be at least 2 (1 serves bulk first), got {value}")
        self._bulk_every = value

    def next(self, waiting: Collection[str]) -> str | None:
        """The class to serve among those with work `waiting`; None when none waits."""
        if BULK in waiting and (
            INTERACTIVE not in waiting or self._since_bulk >= self.bulk_every - 1
        ):
            return BULK
        return INTERACTIVE if INTERACTIVE in waiting else None

    def count(self, priority: str, bulk_waits: bool, served: bool = True) -> None:
        """A turn went to `priority`; `bulk_waits`: bulk work is still waiting after it;
        `served`: counted among `served` (not for a parked bulk forward going on)."""
        self._since_bulk = self._since_bulk + 1 if priority != BULK and bulk_waits else 0
        self.served[priority] += served


class ClassedSlots:
    """At most `size` holders at a time (a thread pool's workers). A freed slot goes to the
    class `Turns` names; first come, first served within a class. Holders call `release`."""

    def __init__(self, size: int, bulk_every: int = DEFAULT_BULK_EVERY) -> None:
        self.size = size
        self.turns = Turns(bulk_every)
        self.busy = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {name: deque() for name in CLASSES}

    def waiting(self) -> dict[str, int]:
        return {name: len(queue) for name, queue in self._waiting.items()}

    async def acquire(self, priority: str | None = None) -> None:
        """Wait for a slot in `priority` (default: the current request's class)."""
        priority = priority or CURRENT.get()
        if self.busy < self.size and not any(self._waiting.values()):
            self._grant(priority)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(waiter)
        try:
            await waiter  # _wake() has granted the slot before resolving it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as it was cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiting[priority].remove(waiter)
            raise

    def release(self) -> None:
        """Give back a slot (on the event loop's thread)."""
        self.busy -= 1
        self._wake()

    def _grant(self, priority: str) -> None:
        self.busy += 1
        self.turns.count(priority, bulk_waits=bool(self._waiting[BULK]))

    def _wake(self) -> None:
        while self.busy < self.size:
            name = self.turns.next([name for name, queue in self._waiting.items() if queue])
            if name is None:
                return
            waiter = self._waiting[name].popleft()
            if not waiter.done():  # a cancelled waiter needs no slot
                self._grant(name)
                waiter.set_result(None)

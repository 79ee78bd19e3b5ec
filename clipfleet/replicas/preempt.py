"""A running bulk forward that parks at a module boundary, so interactive work need not wait
for it.

A CPU forward cannot be interrupted, and one already running is most of what an interactive
request waits for beside a bulk job (the profile in docs/fleet.md#priority-classes). A torch
model is a tree of `nn.Module` calls, though: a forward run through `PausableForward.run`
checks, before each module's call, whether it has been asked to pause, and if so parks its
thread there (holding its activations) until resumed. The ForwardScheduler asks a bulk forward
to pause when interactive work comes, runs that work, then resumes it: the bulk forward loses
no work, and the interactive request waits for one module's call (a millisecond or two), not
for the rest of the bulk forward.

The check is one process-wide forward pre-hook (`torch.nn.modules.module.
register_module_forward_pre_hook`), installed by the first pausable forward; it does nothing on
a thread that is not running a pausable forward. A model with no `nn.Module` calls to check (an
ONNX Runtime session, a scripted module) simply runs to its end: pausing it is asked, never
granted, and the scheduler waits for it as before.

A parked forward keeps the node's forward lease (clipfleet.models.sizing), which the forwards
run while it is parked use in its stead (`LENT_SLOT`): one forward computes at a time, as before.
Code that times a forward from its own thread (the stall guard) learns when it parks and
resumes through `park_listener`: a parked forward is waiting by design, not hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# .gate: the PausableForward the current thread is running; .listener: park_listener's callback
_LOCAL = threading.local()
_installed = False
_install_lock = threading.Lock()


def _checkpoint(module: Any, args: Any) -> None:
    gate = getattr(_LOCAL, "gate", None)
    if gate is not None:
        gate.checkpoint()


def install_hook() -> bool:
    """The process-wide module pre-hook, once; False where torch is not importable."""
    global _installed
    with _install_lock:
        if not _installed:
            try:
                from torch.nn.modules.module import register_module_forward_pre_hook
            except ImportError:
                return False
            register_module_forward_pre_hook(_checkpoint)
            _installed = True
    return True


@contextlib.contextmanager
def park_listener(listener: Callable[[bool], None]) -> Iterator[None]:
    """While inside, a pausable forward on this thread calls `listener(True)` when it parks
    and `listener(False)` when it goes on (on this thread, holding the gate's lock: keep it
    short)."""
    previous = getattr(_LOCAL, "listener", None)
    _LOCAL.listener = listener
    try:
        yield
    finally:
        _LOCAL.listener = previous


class PausableForward:
    """One forward's run on a worker thread, which `pause` parks at its next module call and
    `resume` lets go on. Each is used once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asked = False
        self._parked = False
        self._finished = False
        self._resumed = 0  # resumes so far: a resumed thread runs one module call at least
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None

    def run(self, forward: Callable[[list[Any]], Sequence[Any]], items: list[Any]) -> Any:
        """`forward(items)` on this (worker) thread, parking where asked."""
        install_hook()
        _LOCAL.gate = self
        try:
            return forward(items)
        finally:
            _LOCAL.gate = None
            with self._cond:
                self._finished = True
                self._tell(False)

    def checkpoint(self) -> None:
        """Called before each module call on the forward's thread: parks while pausing is asked."""
        with self._cond:
            if not self._asked:
                return
            self._parked = True
            listener = getattr(_LOCAL, "listener", None)
            if listener is not None:
                listener(True)
            self._tell(True)
            resumed = self._resumed
            while self._resumed == resumed:
                self._cond.wait()
            if listener is not None:
                listener(False)

    def _tell(self, parked: bool) -> None:
        """Resolve the event loop's `pause` future (under the condition's lock)."""
        if self._waiter is not None:
            loop, future = self._waiter
            self._waiter = None
            loop.call_soon_threadsafe(_settle, future, parked)

    async def pause(self) -> bool:
        """Ask the forward to park; True once it has, False if it finished first (or runs no
        module call to park at before it ends)."""
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._finished:
                return False
            self._asked = True
            if self._parked:
                return True
            self._waiter = (asyncio.get_running_loop(), future)
        return await future

    def resume(self) -> None:
        """Let the parked forward go on (to its next module call at least, even if asked to
        park again at once); a no-op when it is not parked."""
        with self._cond:
            self._asked = False
            if self._parked:
                self._parked = False
                self._resumed += 1
            self._waiter = None
            self._cond.notify_all()


def _settle(future: asyncio.Future, parked: bool) -> None:
    if not future.done():
        future.set_result(parked)

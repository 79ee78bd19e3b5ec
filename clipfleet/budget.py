"""An asyncio semaphore counted in bytes: what bounds the memory of concurrent image decodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class ByteBudget:
    """Holders take `n` bytes of `capacity` and give them back; waiters are served first come,
    first served (a big request is not starved by a stream of small ones). A request for more
    than the capacity waits for the whole budget and then runs alone."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[int]:
        """Hold min(nbytes, capacity) bytes for the block; yields the amount held."""
        amount = await self.acquire(nbytes)
        try:
            yield amount
        finally:
            self.release(amount)

    async def acquire(self, nbytes: int) -> int:
        """Wait for min(nbytes, capacity) bytes and take them; returns the amount to release."""
        amount = max(0, min(nbytes, self.capacity))
        if not self._waiters and self.in_use + amount <= self.capacity:
            self.in_use += amount
            return amount
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((amount, waiter))
        try:
            await waiter  # _wake() has added `amount` to in_use before resolving it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_use -= amount  # granted just as it was cancelled: give it back
            else:
                with contextlib.suppress(ValueError):  # _wake() may have dropped it already
                    self._waiters.remove((amount, waiter))
            self._wake()
            raise
        return amount

    def release(self, amount: int) -> None:
        """Give back what `acquire` returned (call it on the event loop's thread)."""
        self.in_use -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            amount, waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += amount
                waiter.set_result(None)

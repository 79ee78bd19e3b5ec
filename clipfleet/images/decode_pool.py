"""Decoding untrusted image bytes in a replica: a small thread pool of its own and a memory
budget, shared by every decode in the process (the fetcher's, and an encoder's own for inline
images and fetched bytes).

Header first (cheap, checked against the limits), then the pixels once the budget has room for
their estimated cost (clipfleet.images.decode.DecodePlan.cost_bytes): at most
`fetch.decode_budget_bytes` of decode memory at a time, on `fetch.decode_threads` threads.

The threads are handed out by priority class (clipfleet.ingress.priority.ClassedSlots: the current
request's class, interactive first, bulk keeping one turn in every `bulk_every`): a decode
holds its slot from the header to the end of the work run after it, so the pool never queues
and a bulk request's 16 images do not stand in front of an interactive one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from clipfleet.config import FetchLimits
from clipfleet.images.budget import ByteBudget
from clipfleet.images.decode import DecodePlan, open_image
from clipfleet.ingress.priority import ClassedSlots


class BudgetedDecoder:
    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self.budget = ByteBudget(limits.decode_budget_bytes)
        self.slots = ClassedSlots(limits.decode_threads)
        self._pool = ThreadPoolExecutor(limits.decode_threads, "clipfleet-decode")

    async def decode(
        self,
        data: bytes,
        limits: FetchLimits | None = None,
        then: Callable[[np.ndarray], Any] | None = None,
    ) -> Any:
        """`data` as an RGB uint8 array shaped by `limits` (default: this decoder's), or
        `then(array)` run on the decoding thread right after it. The bytes stay held until the
        decoding thread is done, even if the caller is cancelled."""
        loop = asyncio.get_running_loop()
        await self.slots.acquire()
        try:
            plan: DecodePlan = await loop.run_in_executor(
                self._pool, open_image, data, limits or self.limits
            )
        except BaseException:
            self.slots.release()
            raise
        try:
            held = await self.budget.acquire(plan.cost_bytes)
        except BaseException:
            plan.close()
            self.slots.release()
            raise

        def release() -> None:
            self.budget.release(held)
            self.slots.release()

        def finished(_: Future) -> None:  # on the decoding thread, or where it was cancelled
            plan.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone: so are the budgets
                loop.call_soon_threadsafe(release)

        decoding = self._pool.submit(_decode_then, plan, then)
        decoding.add_done_callback(finished)
        return await asyncio.wrap_future(decoding)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _decode_then(plan: DecodePlan, then: Callable[[np.ndarray], Any] | None) -> Any:
    pixels = plan.decode()
    return pixels if then is None else then(pixels)

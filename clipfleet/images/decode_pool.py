"""Decoding untrusted image bytes in a replica: a small thread pool of its own and a memory
budget, shared by every decode in the process (the fetcher's, and an encoder's own for inline
images and fetched bytes).

Header first (cheap, checked against the limits), then the pixels once the budget has room for
their estimated cost (clipfleet.images.decode.DecodePlan.cost_bytes): at most
`fetch.decode_budget_bytes` of decode memory at a time, on `fetch.decode_threads` threads.

The threads are handed out by priority class (clipfleet.ingress.priority.ClassedSlots: the current
request's class, interactive first, bulk keeping one turn in every `bulk_every`): a decode
holds its slot from the header to the end of the work run after it, so the pool never queues
and a bulk request's 16 images do not stand in front of an interactive one. Bulk decodes run on
threads of their own at a lower CPU priority (`BULK_NICENESS` on Linux, where niceness is a
per-thread attribute): on a small node the decode of a bulk request's images would otherwise take
CPU from the interactive forward running beside it, since torch's threads and the decode threads
share the cores. The slots still bound both pools together to `decode_threads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from clipfleet.config import FetchLimits
from clipfleet.images.budget import ByteBudget
from clipfleet.images.decode import DecodePlan, open_image
from clipfleet.ingress.priority import BULK, CURRENT, ClassedSlots

logger = logging.getLogger("clipfleet.images")

# Added to a bulk decode thread's niceness: a CPU-bound thread at +10 gets about a tenth of the
# CPU time of one at 0 while both want it, and all of it while interactive work is idle.
BULK_NICENESS = 10


def lower_thread_priority(by: int = BULK_NICENESS) -> None:
    """Raise the calling thread's niceness by `by` (Linux: per thread; elsewhere, where
    niceness is per process, nothing is done). Never fails: a decode runs either way."""
    if not hasattr(os, "setpriority") or os.uname().sysname != "Linux":
        return
    thread = threading.get_native_id()
    try:
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(niceness + by, 19))
    except OSError as error:  # a sandbox without setpriority
        logger.debug("bulk decode thread keeps its priority: %s", error)


class BudgetedDecoder:
    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self.budget = ByteBudget(limits.decode_budget_bytes)
        self.slots = ClassedSlots(limits.decode_threads)
        self._pool = ThreadPoolExecutor(limits.decode_threads, "clipfleet-decode")
        self._bulk_pool = ThreadPoolExecutor(
            limits.decode_threads, "clipfleet-decode-bulk", initializer=lower_thread_priority
        )

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
        priority = CURRENT.get()
        pool = self._bulk_pool if priority == BULK else self._pool
        await self.slots.acquire(priority)
        try:
            plan: DecodePlan = await loop.run_in_executor(
                pool, open_image, data, limits or self.limits
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

        decoding = pool.submit(_decode_then, plan, then)
        decoding.add_done_callback(finished)
        return await asyncio.wrap_future(decoding)

    def close(self) -> None:
        for pool in (self._pool, self._bulk_pool):
            pool.shutdown(wait=False, cancel_futures=True)


def _decode_then(plan: DecodePlan, then: Callable[[np.ndarray], Any] | None) -> Any:
    pixels = plan.decode()
    return pixels if then is None else then(pixels)

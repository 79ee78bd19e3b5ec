"""One forward at a time per model, merging the work that queued behind it.

Ray Serve's `@serve.batch` (2.60) forms the next batch as soon as its wait times out, even while
the previous batch is still running: `max_concurrent_batches` gates when a batch *runs*, not when
it is *formed*. Under load it therefore cuts the queue into many batches of one or two items that
then wait their turn, and a CPU forward of one image costs ~1.7x a batched one (measured in
loadtests/RESULTS.md). The scheduler sits under `@serve.batch`: batches handed to it while a
forward runs are merged, and when the model frees up the oldest kind of work (image or text) runs
next, up to `max_batch_size` items in one forward; a kind that just ran goes after the others
that are waiting, so 64 texts queued first delay one image by one text batch, not four.

Plain asyncio, no Ray: the encoder deployments own one per model. A multiplexed encoder owns one
for all its models: each (kind, model id) gets its own queue and forward, so batches of
different models (which Serve's batching keeps apart) are never merged back together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Forward = Callable[[list[Any]], Sequence[Any]]
QueueKey = tuple[str, str | None]  # (kind, model id); None: the encoder's one model


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class ForwardScheduler:
    def __init__(
        self,
        forwards: dict[str, Forward],
        max_batch_size: int,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        """forwards: kind -> blocking batched forward (list of items -> one result per item),
        run in a worker thread so the event loop keeps accepting requests. on_batch(kind, size,
        seconds) is called on the event loop after each forward."""
        self._forwards: dict[QueueKey, Forward] = {(kind, None): f for kind, f in forwards.items()}
        self._queues: dict[QueueKey, deque[_Pending]] = {key: deque() for key in self._forwards}
        self._on_batch = on_batch
        self._worker: asyncio.Task | None = None
        self._running: list[_Pending] = []
        self._failure: Callable[[], BaseException] | None = None
        self._last: QueueKey | None = None  # the queue whose batch ran last
        self.max_batch_size = max_batch_size

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {size}")
        self._max_batch_size = size

    def pending(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (kind, _), queue in self._queues.items():
            counts[kind] = counts.get(kind, 0) + len(queue)
        return counts

    def fail_all(self, failure: Callable[[], BaseException]) -> None:
        """Fail every item queued here or in the running forward with `failure()`, and every
        item handed over later: the forward thread hung, and nothing queued behind it would
        ever run (clipfleet/replicas/stall.py)."""
        self._failure = failure
        waiting = [entry for queue in self._queues.values() for entry in queue]
        for queue in self._queues.values():
            queue.clear()
        for entry in [*self._running, *waiting]:
            if not entry.future.done():
                entry.future.set_exception(failure())

    async def run(
        self,
        kind: str,
        items: Sequence[Any],
        model_id: str | None = None,
        forward: Forward | None = None,
    ) -> list[Any]:
        """The forward's results for `items`, in order, once they have run in some batch.

        model_id/forward: a multiplexed model's own queue and forward (merged only with work
        for the same model id)."""
        if self._failure is not None:
            raise self._failure()
        loop = asyncio.get_running_loop()
        entries = [_Pending(item, loop.create_future()) for item in items]
        key = (kind, model_id)
        if forward is not None:
            self._forwards[key] = forward
        elif key not in self._forwards:
            raise KeyError(f"no forward for {kind!r} of model {model_id!r}")
        self._queues.setdefault(key, deque()).extend(entries)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return list(await asyncio.gather(*(entry.future for entry in entries)))

    def _next_queue(self) -> QueueKey | None:
        """The queue whose oldest waiting item has waited longest (first come, first served),
        other than the one that ran last while another waits."""
        heads = {key: queue[0].queued_at for key, queue in self._queues.items() if queue}
        if len(heads) > 1:
            heads.pop(self._last, None)
        return min(heads, key=heads.__getitem__) if heads else None

    def _take(self, key: QueueKey) -> list[_Pending]:
        queue, batch = self._queues[key], []
        while queue and len(batch) < self._max_batch_size:
            entry = queue.popleft()
            if not entry.future.done():  # a caller that went away needs no forward
                batch.append(entry)
        return batch

    async def _drain(self) -> None:
        while (key := self._next_queue()) is not None:
            self._last = key
            batch = self._take(key)
            if batch:
                await self._run_batch(key, batch)
            if key[1] is not None and not self._queues[key]:
                del self._queues[key], self._forwards[key]  # let an evicted model go

    async def _run_batch(self, key: QueueKey, batch: list[_Pending]) -> None:
        kind = key[0]
        started = time.perf_counter()
        self._running = batch
        try:
            results = await asyncio.to_thread(self._forwards[key], [entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{kind} forward returned {len(results)} results for {len(batch)} items"
                )
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
        else:
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():
                    entry.future.set_result(result)
        finally:
            self._running = []
        if self._on_batch is not None:
            try:
                self._on_batch(kind, len(batch), time.perf_counter() - started)
            except Exception:  # bookkeeping must never stall the queue
                logger.exception("on_batch callback failed")

"""One forward at a time per model, merging the work that queued behind it.

Ray Serve's `@serve.batch` (2.60) forms the next batch as soon as its wait times out, even while
the previous batch is still running: `max_concurrent_batches` gates when a batch *runs*, not when
it is *formed*. Under load it therefore cuts the queue into many batches of one or two items that
then wait their turn, and a CPU forward of one image costs ~1.7x a batched one (measured in
loadtests/RESULTS.md). The scheduler sits under `@serve.batch`: batches handed to it while a
forward runs are merged, and when the model frees up the oldest kind of work (image or text) runs
next, up to `max_batch_size` items in one forward; a kind that just ran goes after the others
that are waiting, so 64 texts queued first delay one image by one text batch, not four.

Priority classes (clipfleet/ingress/priority.py): items tagged `Classed(item, "bulk")` wait in their
own queues. Interactive work runs first; while bulk work waits, at least one forward in every
`bulk_every` serves it (clipfleet.ingress.priority.Turns), so a stream of interactive requests never
starves a bulk job. A forward
holds one class only: filling an interactive batch with bulk items would lengthen the forward
that interactive requests wait on. `bulk_max_batch_size` bounds a bulk forward's items (the
time an interactive request can wait for the bulk forward already running) while interactive
work is about: once none has come for `INTERACTIVE_WINDOW_S`, bulk forwards are
`max_batch_size` again (a bulk job alone runs at full batch efficiency; the first interactive
request after the lull may wait for one full bulk forward).

A bulk forward already running need not be waited for: interactive work that comes while it
runs parks it at its next module call (clipfleet/replicas/preempt.py), runs in its place, and
lets it go on. Turns still rule: the forwards run while it is parked are interactive turns
taken while bulk waits, so after `bulk_every - 1` of them the parked forward runs to its end
unpaused (bulk keeps one forward in every `bulk_every`, as before).

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

from clipfleet.ingress.priority import (
    BULK,
    DEFAULT_BULK_EVERY,
    DEFAULT_BULK_SLICE_S,
    INTERACTIVE,
    Classed,
    Turns,
)
from clipfleet.models.sizing import LENT_SLOT
from clipfleet.replicas.preempt import PausableForward

logger = logging.getLogger(__name__)

Forward = Callable[[list[Any]], Sequence[Any]]
ForwardKey = tuple[str, str | None]  # (kind, model id); None: the encoder's one model
QueueKey = tuple[str, str | None, str]  # (kind, model id, priority class)

INTERACTIVE_WINDOW_S = 10.0


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class _AtLeast:
    """An int attribute that refuses values below `minimum` (set live by reconfigure)."""

    def __init__(self, minimum: int, why: str = "") -> None:
        self.minimum, self.why = minimum, why

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else obj.__dict__[self.name]

    def __set__(self, obj: Any, value: int) -> None:
        if value < self.minimum:
            raise ValueError(f"{self.name} must be at least {self.minimum}{self.why}, got {value}")
        obj.__dict__[self.name] = value


class ForwardScheduler:
    max_batch_size = _AtLeast(1)

    def __init__(
        self,
        forwards: dict[str, Forward],
        max_batch_size: int,
        on_batch: Callable[[str, int, float], None] | None = None,
        bulk_every: int = DEFAULT_BULK_EVERY,
    ) -> None:
        """forwards: kind -> blocking batched forward (list of items -> one result per item),
        run in a worker thread so the event loop keeps accepting requests. on_batch(kind, size,
        seconds) is called on the event loop after each forward. bulk_every: while bulk work
        waits, at least one forward in this many serves it."""
        self._forwards: dict[ForwardKey, Forward] = {(k, None): f for k, f in forwards.items()}
        self._queues: dict[QueueKey, deque[_Pending]] = {}
        self.turns = Turns(bulk_every)
        self.bulk_max_batch_size: int | None = None  # None: max_batch_size
        self.bulk_slice_s: float | None = DEFAULT_BULK_SLICE_S  # None: a turn is the rest
        self.forwards_by_class = self.turns.served
        self._on_batch = on_batch
        self._worker: asyncio.Task | None = None
        self._running: list[list[_Pending]] = []  # the parked bulk forward's, then the one run
        self._parked = False  # a bulk forward is parked for interactive work
        self._interactive_came = asyncio.Event()
        self.bulk_preempt = True  # interactive work may park a running bulk forward
        self.parkings = 0  # times a bulk forward was parked for interactive work
        self._failure: Callable[[], BaseException] | None = None
        self._last: QueueKey | None = None  # the queue whose batch ran last
        self._interactive_at = -INTERACTIVE_WINDOW_S  # monotonic time interactive work came
        self.max_batch_size = max_batch_size

    @property
    def bulk_every(self) -> int:
        return self.turns.bulk_every

    @bulk_every.setter
    def bulk_every(self, value: int) -> None:
        self.turns.bulk_every = value

    def pending(self) -> dict[str, int]:
        counts = {kind: 0 for kind, _ in self._forwards}
        for (kind, _, _), queue in self._queues.items():
            counts[kind] = counts.get(kind, 0) + len(queue)
        return counts

    def pending_by_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.forwards_by_class, 0)
        for (_, _, priority), queue in self._queues.items():
            counts[priority] += len(queue)
        return counts

    def fail_all(self, failure: Callable[[], BaseException]) -> None:
        """Fail every item queued here or in the running forward with `failure()`, and every
        item handed over later: the forward thread hung, and nothing queued behind it would
        ever run (clipfleet/replicas/stall.py)."""
        self._failure = failure
        waiting = [entry for queue in self._queues.values() for entry in queue]
        for queue in self._queues.values():
            queue.clear()
        for entry in [*(entry for batch in self._running for entry in batch), *waiting]:
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

        Items tagged `Classed` wait in their class's queue (untagged: interactive).
        model_id/forward: a multiplexed model's own queue and forward (merged only with work
        for the same model id)."""
        if self._failure is not None:
            raise self._failure()
        loop = asyncio.get_running_loop()
        key = (kind, model_id)
        if forward is not None:
            self._forwards[key] = forward
        elif key not in self._forwards:
            raise KeyError(f"no forward for {kind!r} of model {model_id!r}")
        entries = []
        for item in items:
            tagged = item if isinstance(item, Classed) else Classed(item)
            entry = _Pending(tagged.item, loop.create_future())
            if tagged.priority == INTERACTIVE:
                self._interactive_at = entry.queued_at
                self._interactive_came.set()
            self._queues.setdefault((kind, model_id, tagged.priority), deque()).append(entry)
            entries.append(entry)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return list(await asyncio.gather(*(entry.future for entry in entries)))

    def _next_queue(self) -> QueueKey | None:
        """Interactive work first, unless bulk work waits and has had no forward in the last
        `bulk_every - 1`; within the class chosen, the queue whose oldest item has waited
        longest (first come, first served), other than the one that ran last while another
        of the class waits."""
        heads = {key: queue[0].queued_at for key, queue in self._queues.items() if queue}
        waiting = {key[2] for key in heads} | ({BULK} if self._parked else set())
        name = self.turns.next(waiting)
        if name is None or (name == BULK and self._parked):
            return None  # nothing waits, or the parked bulk forward's turn to go on
        chosen = {key: at for key, at in heads.items() if key[2] == name}
        if len(chosen) > 1:
            chosen.pop(self._last, None)
        return min(chosen, key=chosen.__getitem__)

    def interactive_about(self) -> bool:
        """Interactive work came within the last INTERACTIVE_WINDOW_S."""
        return time.monotonic() - self._interactive_at < INTERACTIVE_WINDOW_S

    def _count_class(self, priority: str) -> None:
        bulk_waits = self._parked or any(q for key, q in self._queues.items() if key[2] == BULK)
        self.turns.count(priority, bulk_waits)

    def _take(self, key: QueueKey) -> list[_Pending]:
        queue, batch, limit = self._queues[key], [], self.max_batch_size
        if key[2] == BULK and self.bulk_max_batch_size is not None and self.interactive_about():
            limit = min(limit, self.bulk_max_batch_size)
        while queue and len(batch) < limit:
            entry = queue.popleft()
            if not entry.future.done():  # a caller that went away needs no forward
                batch.append(entry)
        return batch

    async def _drain(self) -> None:
        while (key := self._next_queue()) is not None:
            await self._serve(key)

    async def _serve(self, key: QueueKey) -> None:
        """One forward of `key`'s queue (none if all its callers went away)."""
        self._last = key
        batch = self._take(key)
        if batch:
            self._count_class(key[2])
            await self._run_batch(key, batch)
        if not self._queues.get(key):
            self._queues.pop(key, None)
        if key[1] is not None and not any(k[:2] == key[:2] for k in self._queues):
            self._forwards.pop(key[:2], None)  # let an evicted model go

    def _may_park(self) -> bool:
        """Interactive work waits and Turns would serve it before the bulk forward running."""
        interactive = any(q for key, q in self._queues.items() if key[2] == INTERACTIVE)
        return interactive and self.turns.next((INTERACTIVE, BULK)) == INTERACTIVE

    async def _pausable(self, forward: Forward, items: list[Any]) -> Sequence[Any]:
        """A bulk forward that interactive work parks while Turns lets it go first (see the
        module docstring); its results once it has run to its end."""
        gate = PausableForward()
        running = asyncio.ensure_future(asyncio.to_thread(gate.run, forward, items))
        loop, unparkable_until = asyncio.get_running_loop(), 0.0
        try:
            while not running.done():
                if not self._may_park():
                    await self._interactive_or(running)
                elif (slice_left := unparkable_until - loop.time()) > 0:
                    await asyncio.wait({running}, timeout=slice_left)
                elif not await gate.pause():
                    break  # it ended first
                else:
                    self._parked = True
                    self.parkings += 1
                    try:
                        await self._serve_while_parked()
                    finally:
                        self._parked = False
                        unparkable_until = self._bulk_slice(loop.time())
                        gate.resume()
        finally:
            gate.resume()  # never left parked (this task cancelled while asking)
        return await running

    def _bulk_slice(self, now: float) -> float:
        """Until when a parked bulk forward going on may not be parked again. While bulk's turn
        is not due, none (it goes on only because no interactive work waits); once due, its
        turn: the rest of the forward (bulk_slice_s None), or bulk_slice_s of it, and Turns
        counts that turn (interactive work may take its next ones)."""
        if self.turns.next((INTERACTIVE, BULK)) != BULK:
            return 0.0
        if self.bulk_slice_s is None:
            return float("inf")
        self.turns.count(BULK, bulk_waits=True, served=False)
        return now + self.bulk_slice_s

    async def _interactive_or(self, running: asyncio.Future) -> None:
        """Until interactive work comes or `running` is done."""
        self._interactive_came.clear()
        came = asyncio.ensure_future(self._interactive_came.wait())
        try:
            await asyncio.wait({running, came}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            came.cancel()

    async def _serve_while_parked(self) -> None:
        """The interactive forwards Turns allows, in the parked forward's lease slot."""
        token = LENT_SLOT.set(True)
        try:
            while (key := self._next_queue()) is not None:
                await self._serve(key)
        finally:
            LENT_SLOT.reset(token)

    async def _run_batch(self, key: QueueKey, batch: list[_Pending]) -> None:
        kind = key[0]
        started = time.perf_counter()
        self._running.append(batch)
        forward = self._forwards[key[:2]]
        items = [entry.item for entry in batch]
        try:
            if key[2] == BULK and self.bulk_preempt:
                results = await self._pausable(forward, items)
            else:
                results = await asyncio.to_thread(forward, items)
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
            self._running = [running for running in self._running if running is not batch]
        if self._on_batch is not None:
            try:
                self._on_batch(kind, len(batch), time.perf_counter() - started)
            except Exception:  # bookkeeping must never stall the queue
                logger.exception("on_batch callback failed")

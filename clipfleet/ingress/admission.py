"""Admit only what can be served within the deadline: shedding on expected wait.

Per ingress replica, from what it measures itself. A newcomer behind N requests in flight
expects to wait (N + 1) / X, where X is the rate at which this replica gets requests served:

- while it has stayed saturated (at least MIN_IN_FLIGHT in flight) for RATE_WINDOW_S, X is
  what it served over the last RATE_WINDOW_S: then completions measure capacity, not demand,
  and a drop in capacity (a replica starting on the same cores, a slow canary, CPU taken by
  answering refusals) tightens admission within seconds;
- otherwise Little's law over recent served requests: their mean latency L and the mean
  number C in flight while they ran give X = C / L. (Per completed request these averages
  move slowly: alone, they kept admitting at the old rate for the 10-20 s it took a collapsed
  throughput to show, and the work admitted then ran past the deadline.)

Past `limits.shed_wait_s` the newcomer is refused at once with 503 + Retry-After, the
expected wait: the time the work already admitted needs to drain, so clients honouring it come
back when there is room instead of every second (each refusal costs the proxy and the ingress
CPU that the models need). Plain; the middleware is in clipfleet/api/middleware/admission.py.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

SMOOTHING = 0.05  # weight of each completed request in the moving averages
# Always admitted: a cold or lightly loaded replica has not yet measured what it can take.
MIN_IN_FLIGHT = 16
RATE_WINDOW_S = 5.0
MAX_RETRY_AFTER_S = 30


class LittleRate:
    """Moving means of finished requests' latency and of how many ran at once while they did,
    and the rate they give by Little's law (requests served per second)."""

    smoothing = SMOOTHING  # weight of each finished request in the means

    def __init__(self) -> None:
        self.latency_s: float | None = None
        self.concurrency = 1.0

    def observe(self, latency_s: float, in_flight: int) -> None:
        if self.latency_s is None:
            self.latency_s, self.concurrency = latency_s, float(in_flight)
            return
        self.latency_s += self.smoothing * (latency_s - self.latency_s)
        self.concurrency += self.smoothing * (in_flight - self.concurrency)

    def little_rate(self, latency_s: float) -> float:
        return max(self.concurrency, 1.0) / max(latency_s, 1e-6)


class Admission(LittleRate):
    def __init__(self, clock=time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self.in_flight = 0
        self.shed = 0
        self._served_at: deque[float] = deque()  # completions in the last RATE_WINDOW_S
        self._saturated_since: float | None = None

    def _note_load(self, now: float) -> None:
        if self.in_flight < MIN_IN_FLIGHT:
            self._saturated_since = None
        elif self._saturated_since is None:
            self._saturated_since = now

    def _forget_before(self, now: float) -> None:
        while self._served_at and self._served_at[0] <= now - RATE_WINDOW_S:
            self._served_at.popleft()

    def throughput(self) -> float | None:
        """Requests served per second (see the module docstring); None before any."""
        now = self._clock()
        self._forget_before(now)
        saturated = self._saturated_since is not None
        if saturated and now - self._saturated_since >= RATE_WINDOW_S:
            return len(self._served_at) / RATE_WINDOW_S
        if self.latency_s is None:
            return None
        return self.little_rate(self.latency_s)

    def expected_wait_s(self) -> float | None:
        rate = self.throughput()
        if rate is None:
            return None
        return math.inf if rate <= 0 else (self.in_flight + 1) / rate

    def admit(self, max_wait_s: float) -> float | None:
        """None: admitted (call `done` when it finishes); else the seconds to Retry-After."""
        expected = self.expected_wait_s() if self.in_flight >= MIN_IN_FLIGHT else None
        if expected is None or expected <= max_wait_s:
            self.in_flight += 1
            self._note_load(self._clock())
            return None
        self.shed += 1
        return float(max(1, math.ceil(min(expected, MAX_RETRY_AFTER_S))))

    def started(self) -> float:
        return self._clock()

    def done(self, started: float, served: bool = True) -> None:
        """One admitted request finished; only served ones (2xx) are measured: fast refusals
        would make the service look quicker than it is."""
        now = self._clock()
        latency = now - started
        in_flight, self.in_flight = self.in_flight, self.in_flight - 1
        self._note_load(now)
        if not served:
            return
        self._forget_before(now)
        self._served_at.append(now)
        self.observe(latency, in_flight)


# A bulk request may start only if it is expected to finish within this share of the request
# deadline (limits.request_timeout_s): the rest is margin for the bulk rate to drop meanwhile.
BULK_DEADLINE_SHARE = 0.5


class BulkSlots(LittleRate):
    """When a bulk request may start: at most `cap` at once (None: no cap), and fewer while
    the measured bulk rate says a newcomer would not finish within `deadline_s`.

    Beside interactive traffic bulk gets what is left of the models, which can be little: at
    2-4 pairs/s, four 16-pair requests in flight each took ~20 s and some passed the 30 s
    request deadline (504 after the work was done). Each bulk request that ends measures its
    latency and how many ran beside it; a newcomer behind N running expects (N + 1) / X, X =
    running / latency (Little's law), and waits for a start while that is over `deadline_s`.
    One always runs, so bulk never starves; until one has ended, only one runs (the first four
    of a slow bulk job would otherwise all pass the deadline before any had measured it). A
    bulk request running for longer than the mean latency raises it in the estimate at once,
    so a drop in the bulk rate (an interactive surge) shows before the slow ones end.
    `release` is synchronous: a request cancelled while it ends never keeps its start.
    Plain; clipfleet/api/middleware/admission.py waits on it."""

    smoothing = 0.25  # bulk requests finish rarely: each weighs more in the means

    def __init__(self, cap: int | None, deadline_s: float, clock=time.monotonic) -> None:
        super().__init__()
        self.cap, self.deadline_s = cap, deadline_s
        self._clock = clock
        self._starts: list[float] = []  # when each running bulk request started
        self._released = asyncio.Event()  # set (and replaced) by each release

    @property
    def running(self) -> int:
        return len(self._starts)

    def expected_s(self) -> float | None:
        """Seconds a bulk request starting now should take; None before any has ended."""
        if self.latency_s is None:
            return None
        now = self._clock()
        oldest_s = now - min(self._starts, default=now)
        return (self.running + 1) / self.little_rate(max(self.latency_s, oldest_s))

    def may_start(self) -> bool:
        if self.running == 0:
            return True
        if self.cap is not None and self.running >= self.cap:
            return False
        expected = self.expected_s()
        return expected is not None and expected <= self.deadline_s

    async def acquire(self, wait_s: float) -> float | None:
        """The start time once the request may start (pass it to `release`), or None if it
        could not within `wait_s`. Only a release lets one more start (time only tightens the
        estimate)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + wait_s
        while not self.may_start():
            try:
                await asyncio.wait_for(self._released.wait(), give_up_at - loop.time())
            except TimeoutError:
                return None
        started = self._clock()
        self._starts.append(started)
        return started

    def release(self, started: float, measured: bool) -> None:
        """A started bulk request ended; `measured`: its latency says what bulk takes (served,
        or timed out: not a quick refusal)."""
        running = self.running
        self._starts.remove(started)
        if measured:
            self.observe(self._clock() - started, running)
        released, self._released = self._released, asyncio.Event()
        released.set()

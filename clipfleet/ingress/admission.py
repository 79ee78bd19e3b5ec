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

import math
import time
from collections import deque

SMOOTHING = 0.05  # weight of each completed request in the moving averages
# Always admitted: a cold or lightly loaded replica has not yet measured what it can take.
MIN_IN_FLIGHT = 16
RATE_WINDOW_S = 5.0
MAX_RETRY_AFTER_S = 30


class Admission:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.in_flight = 0
        self.latency_s: float | None = None  # moving mean of completed requests
        self.concurrency = 1.0  # moving mean of requests in flight while they ran
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
        return max(self.concurrency, 1.0) / max(self.latency_s, 1e-6)

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
        if self.latency_s is None:
            self.latency_s, self.concurrency = latency, float(in_flight)
            return
        self.latency_s += SMOOTHING * (latency - self.latency_s)
        self.concurrency += SMOOTHING * (in_flight - self.concurrency)

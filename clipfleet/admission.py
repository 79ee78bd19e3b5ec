"""Admit only what can be served within the deadline: shedding on expected wait.

Per ingress replica, from what it measures itself: the mean latency L of recent requests and
the mean number C of requests in flight while they ran. By Little's law the app serves about
C / L requests a second through this replica, so a newcomer behind N requests in flight
expects to wait (N + 1) * L / C. Past `limits.shed_wait_s` it is refused at once with
503 + Retry-After rather than admitted to time out later. Plain; the middleware is in
clipfleet/api/admission.py.
"""

from __future__ import annotations

import math
import time

SMOOTHING = 0.05  # weight of each completed request in the moving averages
# Always admitted: a cold or lightly loaded replica has not yet measured what it can take.
MIN_IN_FLIGHT = 16


class Admission:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.in_flight = 0
        self.latency_s: float | None = None  # moving mean of completed requests
        self.concurrency = 1.0  # moving mean of requests in flight while they ran
        self.shed = 0

    def expected_wait_s(self) -> float | None:
        if self.latency_s is None:
            return None
        return (self.in_flight + 1) * self.latency_s / max(self.concurrency, 1.0)

    def admit(self, max_wait_s: float) -> float | None:
        """None: admitted (call `done` when it finishes); else the seconds to Retry-After."""
        expected = self.expected_wait_s()
        if self.in_flight < MIN_IN_FLIGHT or expected is None or expected <= max_wait_s:
            self.in_flight += 1
            return None
        self.shed += 1
        return float(max(1, math.ceil(expected - max_wait_s)))  # until the excess has drained

    def started(self) -> float:
        return self._clock()

    def done(self, started: float, served: bool = True) -> None:
        """One admitted request finished; only served ones (2xx) are measured: fast refusals
        would make the service look quicker than it is."""
        latency = self._clock() - started
        in_flight, self.in_flight = self.in_flight, self.in_flight - 1
        if not served:
            return
        if self.latency_s is None:
            self.latency_s, self.concurrency = latency, float(in_flight)
            return
        self.latency_s += SMOOTHING * (latency - self.latency_s)
        self.concurrency += SMOOTHING * (in_flight - self.concurrency)

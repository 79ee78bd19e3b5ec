"""Shedding on expected wait, from measured latency and concurrency (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from clipfleet.api.middleware.admission import AdmissionMiddleware
from clipfleet.api.middleware.priority import STATE_PRIORITY
from clipfleet.config import ApiLimits
from clipfleet.ingress.admission import (
    BULK_DEADLINE_SHARE,
    MAX_RETRY_AFTER_S,
    MIN_IN_FLIGHT,
    RATE_WINDOW_S,
    Admission,
    BulkSlots,
)
from clipfleet.ingress.priority import BULK, INTERACTIVE
from tests.support.clock import Clock


def saturate(admission: Admission, clock: Clock, in_flight: int, latency_s: float) -> None:
    """Requests that each took `latency_s` with `in_flight` running at once."""
    for _ in range(200):
        while admission.in_flight < in_flight:
            assert admission.admit(max_wait_s=1e9) is None
        started = clock.now - latency_s
        admission.done(started)


def test_a_cold_replica_admits_a_few_then_measures():
    admission = Admission(Clock())
    assert all(admission.admit(0.001) is None for _ in range(MIN_IN_FLIGHT))


def test_admits_up_to_the_expected_wait_and_sheds_the_rest_with_a_retry_after():
    clock = Clock()
    admission = Admission(clock)
    saturate(admission, clock, in_flight=32, latency_s=1.0)  # ~32 requests/s served
    admission.in_flight = 0
    admitted = 0
    while admission.admit(max_wait_s=3.0) is None:
        admitted += 1
    assert 90 <= admitted <= 100  # 3 s of work at ~32/s
    retry_after = admission.admit(max_wait_s=3.0)
    assert retry_after is not None and retry_after >= 1
    assert admission.shed == 2


def test_an_idle_fast_service_absorbs_a_burst():
    clock = Clock()
    admission = Admission(clock)
    saturate(admission, clock, in_flight=1, latency_s=0.05)
    admission.in_flight = 0
    assert all(admission.admit(max_wait_s=3.0) is None for _ in range(50))


def test_a_collapse_in_throughput_tightens_admission_within_the_window():
    """Saturated, the replica measures what it serves: when that falls from 10/s to 2/s (a
    replica starting on the same cores, say), it admits for 2/s within RATE_WINDOW_S, not after
    the 10-20 s that Little's law over completed requests took to notice."""
    clock = Clock()
    admission = Admission(clock)
    for rate in (10, 2):
        for _ in range(int(rate * (RATE_WINDOW_S + 1))):
            while admission.in_flight < 32:
                assert admission.admit(max_wait_s=1e9) is None
            clock.now += 1 / rate
            admission.done(clock.now - 3.2)  # 32 in flight, 3.2 s each: 10/s by Little's law
        assert admission.throughput() == pytest.approx(rate, rel=0.1)
    # 31 in flight need 16 s at 2/s: nothing more is admitted (by Little's law over the
    # completed requests, 10/s, there was room for 68 more), and Retry-After is the drain time.
    retry_after = admission.admit(max_wait_s=10.0)
    assert retry_after == pytest.approx((admission.in_flight + 1) / 2, abs=1)
    assert admission.in_flight == 31 and admission.shed == 1


def test_nothing_served_while_saturated_sheds_all_but_the_first_few():
    clock = Clock()
    admission = Admission(clock)
    saturate(admission, clock, in_flight=20, latency_s=0.1)
    clock.now += RATE_WINDOW_S + 1  # 20 in flight, none finishing: a stall
    assert admission.throughput() == 0
    assert admission.admit(max_wait_s=5.0) == MAX_RETRY_AFTER_S


async def status_of(middleware: AdmissionMiddleware, priority: str) -> tuple[int, dict]:
    """POST through the middleware with the class PriorityMiddleware would have set."""
    scope = {"type": "http", "method": "POST", "path": "/v1/score", "headers": []}
    scope["state"] = {STATE_PRIORITY: priority}
    sent: list = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    await middleware(scope, receive, send)
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


async def test_bulk_is_shed_at_a_lower_occupancy_than_interactive():
    """At ~32/s with shed_wait_s 4 and bulk_shed_ratio 0.5: bulk is refused once the work
    admitted needs 2 s (~64 in flight), interactive only past 4 s (~128)."""

    async def ok(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AdmissionMiddleware(ok, ApiLimits(shed_wait_s=4.0, bulk_shed_ratio=0.5))
    clock = Clock()
    middleware.admission = admission = Admission(clock)
    saturate(admission, clock, in_flight=32, latency_s=1.0)
    while admission.expected_wait_s() < 3.0:  # between the bulk and the interactive limits
        assert admission.admit(max_wait_s=1e9) is None
    status, headers = await status_of(middleware, BULK)
    assert status == 503 and headers["x-clipfleet-shed"] == "admission"
    assert int(headers["retry-after"]) >= 1
    assert (await status_of(middleware, INTERACTIVE))[0] == 200
    while admission.expected_wait_s() < 4.5:  # past the interactive limit too
        assert admission.admit(max_wait_s=1e9) is None
    assert (await status_of(middleware, INTERACTIVE))[0] == 503


async def test_bulk_over_its_cap_waits_then_is_shed_while_interactive_passes():
    """One bulk request runs (bulk_in_flight 1); a second waits for it up to the bulk wait
    (0.4 s x 0.5), then gets 503 `X-Clipfleet-Shed: bulk`; interactive never waits on the cap."""
    release, running = asyncio.Event(), []

    async def held(scope, receive, send):
        running.append(scope["state"][STATE_PRIORITY])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = ApiLimits(shed_wait_s=0.4, bulk_shed_ratio=0.5, bulk_in_flight=1)
    middleware = AdmissionMiddleware(held, limits)
    first = asyncio.create_task(status_of(middleware, BULK))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(status_of(middleware, BULK))
    interactive = asyncio.create_task(status_of(middleware, INTERACTIVE))
    await asyncio.sleep(0.05)
    assert running == [BULK, INTERACTIVE]  # the second bulk request waits; its body unread
    status, headers = await second
    assert status == 503 and headers["x-clipfleet-shed"] == "bulk"
    assert headers["retry-after"] == "1"
    release.set()
    assert [(await first)[0], (await interactive)[0]] == [200, 200]
    assert middleware.admission.in_flight == 0


async def test_a_waiting_bulk_request_runs_when_a_slot_frees_within_its_wait():
    release, running = asyncio.Event(), []

    async def held(scope, receive, send):
        running.append(len(running))
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AdmissionMiddleware(held, ApiLimits(shed_wait_s=4.0, bulk_in_flight=1))
    requests = [asyncio.create_task(status_of(middleware, BULK)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert running == [0]
    release.set()
    assert [(await request)[0] for request in requests] == [200, 200, 200]
    assert running == [0, 1, 2]


def test_the_bulk_cap_is_validated():
    assert ApiLimits().bulk_in_flight == 4 and ApiLimits(bulk_in_flight=None).bulk_in_flight is None
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ApiLimits(bulk_in_flight=0)


def slow_bulk(clock: Clock, deadline_s: float = 15.0) -> BulkSlots:
    """Bulk slots (cap 4) that measured four bulk requests at once each taking 20 s: 0.2 a
    second served, so a newcomer behind N running expects (N + 1) x 5 s."""
    slots = BulkSlots(cap=4, deadline_s=deadline_s, clock=clock)
    slots.latency_s, slots.concurrency = 20.0, 4.0
    return slots


async def test_bulk_starts_only_while_a_newcomer_would_finish_within_the_deadline():
    slots = slow_bulk(Clock())
    started = [await slots.acquire(0.01) for _ in range(5)]
    # 5, 10, 15 s expected: start; 20 s: over the 15 s deadline, below the cap of 4
    assert [start is not None for start in started] == [True, True, True, False, False]


async def test_one_bulk_request_always_runs():
    slots = slow_bulk(Clock())
    slots.latency_s = 1e6
    assert await slots.acquire(0.01) is not None  # bulk never starves
    assert await slots.acquire(0.01) is None


async def test_a_bulk_request_running_past_the_mean_raises_the_estimate_at_once():
    """Measured 5 s a request at 4 running (20 s each); one has now run 40 s: the rate has
    dropped, and a second would take 2 x 40 / 4 = 20 s, over 15 s (10 s by the mean alone)."""
    clock = Clock()
    slots = slow_bulk(clock)
    first = await slots.acquire(0.01)
    assert slots.expected_s() == 10.0
    clock.advance(40.0)
    assert slots.expected_s() == 20.0 and await slots.acquire(0.01) is None
    slots.release(first, measured=True)
    assert await slots.acquire(0.01) is not None


async def test_until_a_bulk_request_has_ended_they_run_one_at_a_time():
    clock = Clock()
    slots = BulkSlots(cap=4, deadline_s=15.0, clock=clock)
    first = await slots.acquire(0.1)
    assert first is not None and await slots.acquire(0.05) is None
    clock.advance(2.0)
    slots.release(first, measured=True)  # 2 s alone: 0.5 a second
    started = [await slots.acquire(0.05) for _ in range(5)]
    assert slots.running == 4 and started[-1] is None  # the cap


async def test_a_bulk_request_over_the_deadline_waits_for_one_to_end_then_its_measure():
    clock = Clock()
    slots = slow_bulk(clock)
    started = [await slots.acquire(0.1) for _ in range(3)]
    assert None not in started and slots.running == 3
    assert await slots.acquire(0.05) is None  # 4 x 5 s expected: over 15 s
    waiting = asyncio.create_task(slots.acquire(5.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    clock.advance(4.0)  # faster than measured: 4 s with 3 running
    slots.release(started[0], measured=True)
    assert await waiting is not None and slots.running == 3
    assert slots.latency_s == pytest.approx(20.0 + 0.25 * (4.0 - 20.0))


async def test_a_quick_refusal_is_not_measured():
    clock = Clock()
    slots = slow_bulk(clock)
    started = await slots.acquire(0.1)
    clock.advance(0.01)
    slots.release(started, measured=False)
    assert slots.latency_s == 20.0 and slots.running == 0


async def test_the_middleware_sheds_bulk_that_could_not_finish_in_time():
    """request_timeout_s 30: a bulk request may start while it should finish within 15 s; with
    bulk measured at 0.2 a second and three running, a fourth waits, then gets 503 bulk."""
    release = asyncio.Event()

    async def held(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = ApiLimits(request_timeout_s=30.0, shed_wait_s=0.2, bulk_in_flight=4)
    middleware = AdmissionMiddleware(held, limits)
    assert middleware.bulk_slots.deadline_s == 30.0 * BULK_DEADLINE_SHARE
    middleware.bulk_slots = slow_bulk(Clock(), middleware.bulk_slots.deadline_s)
    running = [asyncio.create_task(status_of(middleware, BULK)) for _ in range(3)]
    await asyncio.sleep(0.01)
    status, headers = await status_of(middleware, BULK)
    assert status == 503 and headers["x-clipfleet-shed"] == "bulk"
    release.set()
    assert [(await request)[0] for request in running] == [200, 200, 200]
    assert middleware.bulk_slots.running == 0

"""Shedding on expected wait, from measured latency and concurrency (no Ray)."""

from __future__ import annotations

from clipfleet.admission import MIN_IN_FLIGHT, Admission


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


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

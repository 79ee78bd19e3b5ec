"""Forward threads sized to the node's cores, and the per-node forward lease."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from clipfleet.models import sizing
from clipfleet.models.device import THREADS_ENV
from clipfleet.models.sizing import (
    SLOTS_ENV,
    ForwardLease,
    forward_slots,
    forward_threads,
    node_cores,
)


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv(SLOTS_ENV, raising=False)


def test_a_fractional_reservation_still_gets_the_nodes_cores():
    # the case: clip_fast reserves 0.4 CPU on a 2-core node
    assert forward_threads(0.4, cores=2) == 2
    assert forward_threads(None, cores=2) == 2


def test_big_nodes_split_their_cores_between_forward_slots():
    assert forward_slots(2) == 1 and forward_slots(16) == 2 and forward_slots(64) == 8
    assert forward_threads(0.4, cores=16) == 8  # two slots of 8
    assert forward_threads(12, cores=16) == 12  # a reservation above the share wins
    assert forward_threads(100, cores=16) == 16  # but never more than the node has


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert forward_threads(0.4, cores=16) == 3
    monkeypatch.setenv(SLOTS_ENV, "4")
    assert forward_slots(2) == 4
    monkeypatch.setenv(SLOTS_ENV, "0")
    assert forward_slots(64) == 0


def test_node_cores_follow_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    assert 1 <= node_cores() <= multiprocessing.cpu_count()
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert sizing._cgroup_cpu_limit(quota) == 2
    quota.write_text("max 100000\n")
    assert sizing._cgroup_cpu_limit(quota) is None
    assert sizing._cgroup_cpu_limit(tmp_path / "missing") is None


def _overlap(lease: ForwardLease, workers: int) -> int:
    """The most holders seen at once when `workers` threads each hold the lease briefly."""
    holding, peak, guard = 0, 0, threading.Lock()

    def work() -> None:
        nonlocal holding, peak
        with lease.hold():
            with guard:
                holding += 1
                peak = max(peak, holding)
            time.sleep(0.05)
            with guard:
                holding -= 1

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return peak


@pytest.mark.parametrize("slots", [1, 2])
def test_lease_admits_at_most_its_slots(tmp_path, slots):
    lease = ForwardLease(slots, tmp_path)
    assert _overlap(lease, 4) == slots
    assert lease.stats()["acquired"] == 4 and lease.stats()["waited_s"] > 0


def _hold_in_child(directory: str, ready, release) -> None:
    with ForwardLease(1, directory).hold():
        ready.set()
        release.wait(10)


def test_lease_is_shared_across_processes(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    child = context.Process(target=_hold_in_child, args=(str(tmp_path), ready, release))
    child.start()
    try:
        assert ready.wait(30)
        lease = ForwardLease(1, tmp_path)
        acquired = threading.Event()

        def take() -> None:
            with lease.hold():
                acquired.set()

        waiter = threading.Thread(target=take)
        waiter.start()
        assert not acquired.wait(0.3)  # the other process holds the only slot
        release.set()
        assert acquired.wait(10)
        waiter.join(5)
    finally:
        release.set()
        child.join(10)


def test_wrap_holds_the_lease_around_the_forward(tmp_path):
    lease = ForwardLease(1, tmp_path)
    assert lease.wrap(lambda items: [item * 2 for item in items])([1, 2]) == [2, 4]
    assert lease.stats()["acquired"] == 1


def test_a_lease_needs_a_slot(tmp_path):
    with pytest.raises(ValueError):
        ForwardLease(0, tmp_path)

"""Variant choice (weights, stickiness, pins) and automatic rollback, without Ray.

Several TrafficManagers over one MemoryStore play the ingress replicas of one application.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from clipfleet.rollout.store import MemoryStore
from clipfleet.rollout.traffic import (
    STALE_AFTER_S,
    RollbackPolicy,
    TrafficConfig,
    TrafficManager,
    exchange,
)
from clipfleet.rollout.window import Counts, judge
from tests.support.clock import Clock

VARIANTS = {"fast": ["stable", "canary"], "accurate": ["stable"]}


def manager(weights=None, clock=None, store=None, replica="r1", **policy) -> TrafficManager:
    clock = clock or Clock(1000.0)
    traffic = TrafficManager(VARIANTS, store=store, replica=replica, clock=clock)
    traffic.apply(config(weights, **policy))
    traffic.sync()
    clock.now += 1  # past the bucket in which the weights' epoch began
    return traffic


def config(weights=None, **policy) -> TrafficConfig:
    weights = weights or {"fast": {"stable": 90, "canary": 10}}
    return TrafficConfig(weights=weights, rollback=RollbackPolicy(**policy))


def test_default_is_all_stable():
    traffic = TrafficManager(VARIANTS)
    assert {traffic.choose("fast") for _ in range(200)} == {"stable"}


def test_keyed_split_matches_weights_and_is_sticky():
    traffic = manager()
    chosen = [traffic.choose("fast", route_key=f"user-{i}") for i in range(4000)]
    share = chosen.count("canary") / len(chosen)
    assert 0.085 < share < 0.115  # 10 % ± ~3.5 standard deviations
    assert all(traffic.choose("fast", route_key=f"user-{i}") == chosen[i] for i in range(500))


def test_unkeyed_split_is_random_by_weight():
    traffic = manager({"fast": {"stable": 50, "canary": 50}})
    share = [traffic.choose("fast") for _ in range(4000)].count("canary") / 4000
    assert 0.46 < share < 0.54


def test_pins_and_zero_weights():
    traffic = manager({"fast": {"stable": 0, "canary": 100}})
    assert {traffic.choose("fast", route_key=str(i)) for i in range(100)} == {"canary"}
    assert traffic.choose("fast", pinned="stable") == "stable"
    with pytest.raises(KeyError):
        traffic.choose("fast", pinned="nope")


@pytest.mark.parametrize(
    "weights",
    [{"nope": {"stable": 1}}, {"fast": {"stable": 1, "other": 1}}, {"fast": {"stable": -1}}],
)
def test_bad_weights_are_rejected(weights):
    with pytest.raises(ValueError):
        manager(weights)


def test_unknown_traffic_keys_are_rejected():
    with pytest.raises(ValidationError):
        TrafficConfig(weigths={})


def test_failing_canary_is_rolled_back_and_stays_back_until_weights_change():
    traffic = manager({"fast": {"stable": 50, "canary": 50}}, min_requests=10)
    for _ in range(30):
        traffic.record("fast", "stable", True, 0.01)
    for _ in range(9):
        traffic.record("fast", "canary", False, 0.01)
    assert traffic.sync() == []  # 9 < min_requests
    traffic.record("fast", "canary", False, 0.01)
    (rollback,) = traffic.sync()
    assert rollback.variant == "canary" and "error ratio" in rollback.reason
    status = traffic.status("fast")["canary"]
    assert status["rolled_back"] and status["weight"] == 0 and status["configured_weight"] == 50
    assert {traffic.choose("fast") for _ in range(200)} == {"stable"}
    assert traffic.rollbacks == 1
    traffic.apply(TrafficConfig(weights={"fast": {"stable": 50, "canary": 50}}))
    assert {traffic.choose("fast") for _ in range(200)} == {"stable"}  # before the sync too
    traffic.sync()
    assert traffic.status("fast")["canary"]["rolled_back"]  # same weights: still rolled back
    traffic.apply(TrafficConfig(weights={"fast": {"stable": 95, "canary": 5}}))
    traffic.sync()
    traffic._clock.now += 1
    traffic.sync()
    canary = traffic.status("fast")["canary"]
    assert not canary["rolled_back"] and canary["window_requests"] == 0  # a clean slate
    assert traffic.rollbacks == 1


def test_slow_canary_is_rolled_back_on_p95():
    traffic = manager(min_requests=10, max_p95_ratio=2.0, min_p95_increase_s=0.05)
    for _ in range(20):
        traffic.record("fast", "stable", True, 0.1)
    for _ in range(10):
        traffic.record("fast", "canary", True, 0.5)
    (rollback,) = traffic.sync()
    assert "p95" in rollback.reason


@pytest.mark.parametrize(
    ("stable_s", "canary_s", "rolled_back"),
    [
        (0.010, 0.040, False),  # 4 x stable's p95, but only 30 ms slower: under 50 ms
        (0.100, 0.180, False),  # 80 ms slower, but under 2 x
        (0.100, 0.300, True),  # both: 3 x and 200 ms slower
    ],
)
def test_p95_guard_needs_both_the_ratio_and_min_p95_increase_s(stable_s, canary_s, rolled_back):
    traffic = manager(min_requests=10, max_p95_ratio=2.0, min_p95_increase_s=0.05)
    for _ in range(20):
        traffic.record("fast", "stable", True, stable_s)
        traffic.record("fast", "canary", True, canary_s)
    decided = traffic.sync()
    assert bool(decided) == rolled_back, decided
    assert traffic.status("fast")["canary"]["rolled_back"] == rolled_back


class RendezvousStore(MemoryStore):
    """Holds every write of a rollback until `parties` callers make one: replicas that judged
    the same window at the same moment, racing to write it."""

    def __init__(self, parties: int) -> None:
        super().__init__(shared=True)
        self.barrier = threading.Barrier(parties, timeout=10)

    def put(self, key: str, value: bytes, overwrite: bool = True) -> bool:
        if "/rollback/" in key:
            self.barrier.wait()
        return super().put(key, value, overwrite)


def test_a_rollback_is_decided_once_when_replicas_judge_at_the_same_moment():
    clock = Clock(1000.0)
    weights = {"fast": {"stable": 50, "canary": 50}}
    seed = MemoryStore(shared=True)
    replicas = [manager(weights, clock, seed, f"r{i}", min_requests=10) for i in range(3)]
    store = RendezvousStore(parties=len(replicas))
    store._data = dict(seed._data)  # the epochs the replicas already share
    for traffic in replicas:
        traffic.store = store
        for _ in range(10):  # each alone is past min_requests: each would roll back
            traffic.record("fast", "canary", False, 0.01)
    arguments = [traffic.prepare() for traffic in replicas]
    with ThreadPoolExecutor(len(replicas)) as pool:  # exchange() is what the sync thread runs
        results = list(pool.map(lambda args: exchange(*args), arguments))
    decided = [
        traffic.adopt(view, rollbacks, at=args[-1])
        for traffic, (view, rollbacks), args in zip(replicas, results, arguments, strict=True)
    ]
    assert sum(len(rollbacks) for rollbacks in decided) == 1  # one writer, one warning/metric
    assert sum(traffic.rollbacks for traffic in replicas) == 1
    for traffic in replicas:  # and every replica routes by it
        assert traffic.status("fast")["canary"]["rolled_back"]
        assert {traffic.choose("fast") for _ in range(100)} == {"stable"}


def test_healthy_canary_and_old_failures_are_left_alone():
    clock = Clock(1000.0)
    traffic = manager(clock=clock, min_requests=10, window_s=10)
    for _ in range(9):
        traffic.record("fast", "canary", False, 0.01)
    traffic.sync()
    clock.now += 20  # the failures leave the window
    for _ in range(20):
        traffic.record("fast", "stable", True, 0.1)
        traffic.record("fast", "canary", True, 0.11)
        assert traffic.sync() == []
    assert not traffic.status("fast")["canary"]["rolled_back"]


def test_replicas_judge_their_summed_outcomes_and_share_the_rollback():
    store, clock = MemoryStore(shared=True), Clock(1000.0)
    weights = {"fast": {"stable": 50, "canary": 50}}
    first, second = (
        manager(weights, clock, store, replica, min_requests=10) for replica in ("r1", "r2")
    )
    for traffic in (first, second):  # 5 failures each: neither alone reaches min_requests
        for _ in range(5):
            traffic.record("fast", "canary", False, 0.01)
    first.sync()
    decided = second.sync()
    assert [r.variant for r in decided] == ["canary"]
    first.sync()
    assert first.status("fast") == second.status("fast")
    assert first.status("fast")["canary"]["window_requests"] == 10
    assert first.rollbacks + second.rollbacks == 1  # decided once for the app

    # A new (or restarted) replica: stable only until it has read the shared state, and then
    # it honours the rollback it did not see happen.
    third = TrafficManager(VARIANTS, store=store, replica="r3", clock=clock)
    third.apply(config(weights, min_requests=10))
    assert {third.choose("fast") for _ in range(200)} == {"stable"}
    third.sync()
    assert third.status("fast")["canary"]["rolled_back"]
    assert {third.choose("fast") for _ in range(200)} == {"stable"}


def test_lost_shared_state_means_stable_only_until_it_is_back():
    store, clock = MemoryStore(shared=True), Clock(1000.0)
    traffic = manager({"fast": {"stable": 50, "canary": 50}}, clock, store)
    assert "canary" in {traffic.choose("fast") for _ in range(200)}
    store.available = False
    with pytest.raises(ConnectionError):
        traffic.sync()
    clock.now += STALE_AFTER_S + 1
    assert {traffic.choose("fast") for _ in range(200)} == {"stable"}
    assert not traffic.shared_state()["fresh"]
    store.available = True
    traffic.sync()
    assert "canary" in {traffic.choose("fast") for _ in range(200)}


def test_judging_is_on_bucketed_counts():
    policy = RollbackPolicy(min_requests=5, window_s=3600)
    assert policy.bucket_s == 60  # a one-hour window still has 60 buckets
    stable, canary = Counts(), Counts()
    for _ in range(100):
        stable.add(True, 0.1)
        canary.add(True, 0.12)
    assert judge(canary, stable, policy) is None
    assert 0.1 <= stable.p95_s() < 0.13
    for _ in range(20):
        canary.add(False, 5.0)
    assert "error ratio" in judge(canary, stable, policy)

"""Variant choice (weights, stickiness, pins) and automatic rollback, without Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clipfleet.traffic import RollbackPolicy, TrafficConfig, TrafficManager

VARIANTS = {"fast": ["stable", "canary"], "accurate": ["stable"]}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def manager(weights=None, clock=None, **policy) -> TrafficManager:
    traffic = TrafficManager(VARIANTS, clock=clock or Clock())
    config = {"weights": weights or {"fast": {"stable": 90, "canary": 10}}}
    traffic.apply(TrafficConfig(**config, rollback=RollbackPolicy(**policy)))
    return traffic


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
        assert traffic.record("fast", "stable", True, 0.01) is None
    reasons = [traffic.record("fast", "canary", False, 0.01) for _ in range(10)]
    assert reasons[:9] == [None] * 9 and "error ratio" in reasons[9]
    status = traffic.status("fast")["canary"]
    assert status["rolled_back"] and status["weight"] == 0 and status["configured_weight"] == 50
    assert {traffic.choose("fast") for _ in range(200)} == {"stable"}
    assert traffic.rollbacks == 1
    traffic.apply(TrafficConfig(weights={"fast": {"stable": 50, "canary": 50}}))
    assert traffic.status("fast")["canary"]["rolled_back"]  # same weights: still rolled back
    traffic.apply(TrafficConfig(weights={"fast": {"stable": 95, "canary": 5}}))
    assert not traffic.status("fast")["canary"]["rolled_back"]


def test_slow_canary_is_rolled_back_on_p95():
    traffic = manager(min_requests=10, max_p95_ratio=2.0, min_p95_increase_s=0.05)
    for _ in range(20):
        traffic.record("fast", "stable", True, 0.1)
    reasons = [traffic.record("fast", "canary", True, 0.5) for _ in range(10)]
    assert "p95" in reasons[-1]


def test_healthy_canary_and_old_failures_are_left_alone():
    clock = Clock()
    traffic = manager(clock=clock, min_requests=10, window_s=10)
    for _ in range(9):
        traffic.record("fast", "canary", False, 0.01)
    clock.now = 20  # the failures leave the window
    for _ in range(20):
        traffic.record("fast", "stable", True, 0.1)
        assert traffic.record("fast", "canary", True, 0.11) is None
    assert not traffic.status("fast")["canary"]["rolled_back"]

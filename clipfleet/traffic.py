"""Canary traffic: weighted sticky variant choice and automatic rollback. Plain, Ray-free.

Weights come from the ingress's `user_config` (TrafficConfig) so `serve deploy` changes them
in place. A rolled-back variant gets no traffic until an operator changes its weight.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import Field

from clipfleet.config import STABLE_VARIANT, StrictModel

logger = logging.getLogger("ray.serve")


class RollbackPolicy(StrictModel):
    enabled: bool = True
    window_s: float = Field(60.0, gt=0, le=3600)
    min_requests: int = Field(20, ge=1)
    # roll back when canary error ratio - stable error ratio exceeds this
    max_error_ratio_increase: float = Field(0.05, ge=0, le=1)
    # ... or when canary p95 latency exceeds stable p95 by this factor and by min_p95_increase_s
    max_p95_ratio: float = Field(2.0, ge=1)
    min_p95_increase_s: float = Field(0.05, ge=0)


class TrafficConfig(StrictModel):
    """The Ingress `user_config`: per-profile variant weights and the rollback policy."""

    weights: dict[str, dict[str, float]] = {}
    rollback: RollbackPolicy = RollbackPolicy()

    def check_against(self, variants: Mapping[str, set[str]]) -> None:
        for profile, weights in self.weights.items():
            if profile not in variants:
                raise ValueError(f"traffic weights name unknown profile {profile!r}")
            unknown = set(weights) - variants[profile]
            if unknown:
                raise ValueError(f"profile {profile!r} has no variant(s) {sorted(unknown)}")
            if any(weight < 0 for weight in weights.values()):
                raise ValueError(f"profile {profile!r}: weights must be >= 0")


@dataclass
class Outcome:
    at: float
    ok: bool
    latency_s: float


@dataclass
class VariantState:
    configured_weight: float
    rolled_back_reason: str | None = None
    outcomes: deque[Outcome] = field(default_factory=deque)

    @property
    def weight(self) -> float:
        return 0.0 if self.rolled_back_reason else self.configured_weight


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _bucket(profile: str, key: str) -> float:
    """A stable point in [0, 1) for a routing key: the same key, the same variant."""
    digest = hashlib.sha256(f"{profile}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class TrafficManager:
    def __init__(self, variants: Mapping[str, list[str]], clock=time.monotonic) -> None:
        self._variants = {profile: list(names) for profile, names in variants.items()}
        self._clock = clock
        self._random = random.Random()
        self.policy = RollbackPolicy()
        self.rollbacks = 0
        self._state: dict[str, dict[str, VariantState]] = {}
        self.apply(TrafficConfig())

    def apply(self, config: TrafficConfig) -> None:
        """New weights; a variant whose weight changed gets a clean slate (and its traffic back)."""
        config.check_against({p: set(names) for p, names in self._variants.items()})
        self.policy = config.rollback
        for profile, names in self._variants.items():
            weights = config.weights.get(profile, {STABLE_VARIANT: 100.0})
            old = self._state.get(profile, {})
            self._state[profile] = {}
            for name in names:
                weight = float(weights.get(name, 0.0))
                previous = old.get(name)
                keep = previous is not None and previous.configured_weight == weight
                self._state[profile][name] = previous if keep else VariantState(weight)

    def choose(self, profile: str, route_key: str | None = None, pinned: str | None = None) -> str:
        states = self._state[profile]
        if pinned is not None:
            if pinned not in states:
                raise KeyError(pinned)
            return pinned
        total = sum(state.weight for state in states.values())
        if total <= 0:
            return STABLE_VARIANT
        point = (_bucket(profile, route_key) if route_key else self._random.random()) * total
        for name, state in states.items():
            point -= state.weight
            if point < 0 and state.weight > 0:
                return name
        return next(name for name, state in reversed(states.items()) if state.weight > 0)

    def record(self, profile: str, variant: str, ok: bool, latency_s: float) -> str | None:
        """Note one request's outcome; returns the rollback reason if this rolled it back."""
        now = self._clock()
        states = self._state[profile]
        state = states[variant]
        state.outcomes.append(Outcome(now, ok, latency_s))
        for each in states.values():
            while each.outcomes and now - each.outcomes[0].at > self.policy.window_s:
                each.outcomes.popleft()
        if variant == STABLE_VARIANT or state.rolled_back_reason or not self.policy.enabled:
            return None
        reason = self._judge(state, states[STABLE_VARIANT])
        if reason:
            state.rolled_back_reason = reason
            self.rollbacks += 1
            logger.warning("canary rollback: profile %s variant %s: %s", profile, variant, reason)
        return reason

    def _judge(self, canary: VariantState, stable: VariantState) -> str | None:
        policy = self.policy
        if len(canary.outcomes) < policy.min_requests:
            return None
        canary_errors = sum(not o.ok for o in canary.outcomes) / len(canary.outcomes)
        stable_errors = (
            sum(not o.ok for o in stable.outcomes) / len(stable.outcomes) if stable.outcomes else 0
        )
        if canary_errors - stable_errors > policy.max_error_ratio_increase:
            return (
                f"error ratio {canary_errors:.1%} vs stable {stable_errors:.1%} over "
                f"{len(canary.outcomes)} requests"
            )
        canary_ok = [o.latency_s for o in canary.outcomes if o.ok]
        stable_ok = [o.latency_s for o in stable.outcomes if o.ok]
        if len(canary_ok) >= policy.min_requests and len(stable_ok) >= policy.min_requests:
            canary_p95, stable_p95 = _p95(canary_ok), _p95(stable_ok)
            if (
                canary_p95 > stable_p95 * policy.max_p95_ratio
                and canary_p95 - stable_p95 > policy.min_p95_increase_s
            ):
                return f"p95 latency {canary_p95:.3f} s vs stable {stable_p95:.3f} s"
        return None

    def status(self, profile: str) -> dict[str, dict]:
        return {
            name: {
                "weight": state.weight,
                "configured_weight": state.configured_weight,
                "rolled_back": state.rolled_back_reason is not None,
                "rollback_reason": state.rolled_back_reason,
                "window_requests": len(state.outcomes),
            }
            for name, state in self._state[profile].items()
        }

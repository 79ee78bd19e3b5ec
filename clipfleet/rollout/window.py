"""Windowed canary outcomes as bucketed counters, and the rollback judgement over them.

Every ingress replica counts its own requests into time buckets (requests, errors, and a
fixed-bucket latency histogram of the successful ones). The buckets of all replicas are summed
and judged about once a second, off the request path: the cost is O(buckets), whatever the
window or the request rate. Plain and Ray-free.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import Field

from clipfleet.config import StrictModel

# Log-spaced latency bounds, 1 ms .. ~200 s, 25 % apart: p95 is known to within one step.
LATENCY_BOUNDS_S = tuple(0.001 * 1.25**k for k in range(56))
MAX_BUCKETS = 60  # per window, whatever window_s is


class RollbackPolicy(StrictModel):
    enabled: bool = True
    window_s: float = Field(60.0, gt=0, le=3600)
    min_requests: int = Field(20, ge=1)
    # roll back when canary error ratio - stable error ratio exceeds this
    max_error_ratio_increase: float = Field(0.05, ge=0, le=1)
    # ... or when canary p95 latency exceeds stable p95 by this factor and by min_p95_increase_s
    max_p95_ratio: float = Field(2.0, ge=1)
    min_p95_increase_s: float = Field(0.05, ge=0)

    @property
    def bucket_s(self) -> float:
        return max(1.0, self.window_s / MAX_BUCKETS)

    def first_bucket(self, now: float) -> int:
        """The oldest time bucket still inside the window ending at `now`."""
        return int(now // self.bucket_s) - math.ceil(self.window_s / self.bucket_s) + 1


def latency_bucket(latency_s: float) -> int:
    return min(bisect.bisect_left(LATENCY_BOUNDS_S, latency_s), len(LATENCY_BOUNDS_S) - 1)


@dataclass
class Counts:
    """Outcomes of one variant: requests, errors, latency histogram of the successes."""

    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, ok: bool, latency_s: float) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
            return
        index = latency_bucket(latency_s)
        self.latency[index] = self.latency.get(index, 0) + 1

    def merge(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for index, count in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count

    @property
    def successes(self) -> int:
        return self.requests - self.errors

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p95_s(self) -> float | None:
        """The upper bound of the histogram bucket holding the 95th percentile success."""
        if not self.successes:
            return None
        rank = math.ceil(0.95 * self.successes)
        seen = 0
        for index in sorted(self.latency):
            seen += self.latency[index]
            if seen >= rank:
                return LATENCY_BOUNDS_S[index]
        return LATENCY_BOUNDS_S[-1]

    def to_json(self) -> list:
        return [self.requests, self.errors, {str(k): v for k, v in self.latency.items()}]

    @classmethod
    def from_json(cls, value: list) -> Counts:
        requests, errors, latency = value
        return cls(int(requests), int(errors), {int(k): int(v) for k, v in latency.items()})


class Buckets:
    """One replica's counts per variant ("profile/variant") per time bucket."""

    def __init__(self) -> None:
        self.bucket_s = 1.0
        self.by_variant: dict[str, dict[int, Counts]] = {}

    def add(self, key: str, now: float, ok: bool, latency_s: float) -> None:
        buckets = self.by_variant.setdefault(key, {})
        index = int(now // self.bucket_s)
        counts = buckets.get(index)
        if counts is None:
            counts = buckets[index] = Counts()
        counts.add(ok, latency_s)

    def snapshot(self, policy: RollbackPolicy, now: float) -> dict:
        """The window's buckets as JSON-ready data, dropping older ones (call on the loop)."""
        if policy.bucket_s != self.bucket_s:  # a new window size: new bucket boundaries
            self.bucket_s = policy.bucket_s
            self.by_variant = {}
        first = policy.first_bucket(now)
        variants = {}
        for key, buckets in self.by_variant.items():
            for index in [index for index in buckets if index < first]:
                del buckets[index]
            variants[key] = {str(index): counts.to_json() for index, counts in buckets.items()}
        return {"bucket_s": self.bucket_s, "updated": now, "variants": variants}


def merge_window(
    payloads: Iterable[Mapping], key: str, policy: RollbackPolicy, now: float, since: float
) -> Counts:
    """The sum of every replica's buckets of `key` in the window and wholly after `since`."""
    # the bucket holding `since` straddles an epoch change: left out
    first = max(policy.first_bucket(now), int(since // policy.bucket_s) + 1)
    total = Counts()
    for payload in payloads:
        if payload.get("bucket_s") != policy.bucket_s:
            continue
        for index, value in payload.get("variants", {}).get(key, {}).items():
            if int(index) >= first:
                total.merge(Counts.from_json(value))
    return total


def judge(canary: Counts, stable: Counts, policy: RollbackPolicy) -> str | None:
    """Why the canary should be rolled back, or None."""
    if canary.requests < policy.min_requests:
        return None
    if canary.error_ratio - stable.error_ratio > policy.max_error_ratio_increase:
        return (
            f"error ratio {canary.error_ratio:.1%} vs stable {stable.error_ratio:.1%} over "
            f"{canary.requests} requests"
        )
    if canary.successes >= policy.min_requests and stable.successes >= policy.min_requests:
        canary_p95, stable_p95 = canary.p95_s(), stable.p95_s()
        if (
            canary_p95 > stable_p95 * policy.max_p95_ratio
            and canary_p95 - stable_p95 > policy.min_p95_increase_s
        ):
            return f"p95 latency {canary_p95:.3f} s vs stable {stable_p95:.3f} s"
    return None

"""Canary traffic: weighted sticky variant choice and automatic rollback, one state per app.

Weights come from the ingress's `user_config` (TrafficConfig) so `serve deploy` changes them
in place. Outcomes are counted per replica into time buckets (O(1) per request); about once a
second each replica `sync`s: it publishes its buckets to the application's SharedStore, reads
everyone's, judges the canaries on the sum and reads/writes the rollback decisions there. So
every replica routes, and reports, the application's one state:

- a variant's *epoch* (its configured weight and since when) is shared; an operator's weight
  change starts a new epoch: a clean slate and its traffic back. Nothing else brings it back,
  so `serve deploy` with unchanged weights leaves a rolled-back canary rolled back;
- a replica that has not read the shared state yet (fresh, restarted, added), or that cannot
  reach it for STALE_AFTER_S, sends unpinned requests to stable only.

Reads happen in `exchange`, a function of immutable inputs that may run on a worker thread;
the routing view it returns is swapped in whole on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from clipfleet.config import STABLE_VARIANT, StrictModel
from clipfleet.rollout.store import MemoryStore, SharedStore
from clipfleet.rollout.window import Buckets, RollbackPolicy, judge, merge_window

__all__ = ["Rollback", "RollbackPolicy", "TrafficConfig", "TrafficManager"]

logger = logging.getLogger("ray.serve")
STALE_AFTER_S = 5.0
SYNC_S = 1.0  # how often each ingress replica exchanges the shared traffic state
MIN_SYNC_S = 0.1  # ... and how often at most, when canary failures wake it early


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


@dataclass(frozen=True)
class Rollback:
    profile: str
    variant: str
    reason: str


def _bucket(profile: str, key: str) -> float:
    """A stable point in [0, 1) for a routing key: the same key, the same variant."""
    digest = hashlib.sha256(f"{profile}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def configured_weights(
    variants: Mapping[str, list[str]], config: TrafficConfig
) -> dict[str, dict[str, float]]:
    weights = {}
    for profile, names in variants.items():
        given = config.weights.get(profile, {STABLE_VARIANT: 100.0})
        weights[profile] = {name: float(given.get(name, 0.0)) for name in names}
    return weights


def exchange(
    store: SharedStore,
    app: str,
    replica: str,
    payload: dict,
    weights: Mapping[str, Mapping[str, float]],
    policy: RollbackPolicy,
    now: float,
) -> tuple[dict, list[Rollback]]:
    """Publish this replica's buckets, read the app's state, judge; returns (view, rollbacks
    this call decided). Blocking store I/O: run it off the event loop."""
    prefix = f"{app}/"
    store.put(f"{prefix}outcomes/{replica}", json.dumps(payload).encode())
    shared = {key[len(prefix) :]: value for key, value in store.read_prefix(prefix).items()}
    payloads = []
    for key, raw in shared.items():
        if key.startswith("outcomes/"):
            data = json.loads(raw)
            if now - data.get("updated", 0) > policy.window_s + 60:
                store.delete(prefix + key)  # a replica gone for longer than the window
            else:
                payloads.append(data)
    view: dict[str, dict[str, dict]] = {}
    decided = []
    for profile, variant_weights in weights.items():
        epochs = {}
        for variant, weight in variant_weights.items():
            epoch = json.loads(shared.get(f"epoch/{profile}/{variant}", b"null"))
            if epoch is None or epoch["weight"] != weight:  # an operator's change
                epoch = {"weight": weight, "since": now}
                store.put(f"{prefix}epoch/{profile}/{variant}", json.dumps(epoch).encode())
            epochs[variant] = epoch
        counts = {
            v: merge_window(payloads, f"{profile}/{v}", policy, now, epochs[v]["since"])
            for v in variant_weights
        }
        view[profile] = {}
        for variant, weight in variant_weights.items():
            since = epochs[variant]["since"]
            rollback_key = f"rollback/{profile}/{variant}/{since!r}"
            reason = json.loads(shared.get(rollback_key, b"null"))
            for stale in shared:
                if stale.startswith(f"rollback/{profile}/{variant}/") and stale != rollback_key:
                    store.delete(prefix + stale)
            if reason is None and variant != STABLE_VARIANT and weight > 0 and policy.enabled:
                verdict = judge(counts[variant], counts[STABLE_VARIANT], policy)
                if verdict is not None:
                    if store.put(prefix + rollback_key, json.dumps(verdict).encode(), False):
                        decided.append(Rollback(profile, variant, verdict))
                    reason = verdict
            view[profile][variant] = {
                "weight": 0.0 if reason else weight,
                "configured_weight": weight,
                "rolled_back": reason is not None,
                "rollback_reason": reason,
                "window_requests": counts[variant].requests,
                "window_errors": counts[variant].errors,
                "window_p95_s": counts[variant].p95_s(),
            }
    return view, decided


class TrafficManager:
    def __init__(
        self,
        variants: Mapping[str, list[str]],
        store: SharedStore | None = None,
        app: str = "local",
        replica: str = "local",
        clock=time.time,
    ) -> None:
        self._variants = {profile: list(names) for profile, names in variants.items()}
        self.store = store if store is not None else MemoryStore()
        self.app, self.replica = app, replica
        self._clock = clock
        self._random = random.Random()
        self._buckets = Buckets()
        self.rollbacks = 0
        self._synced_at: float | None = None
        self.on_canary_failure: Callable[[], None] | None = None  # wakes the sync loop early
        self.apply(TrafficConfig())

    # -- on the event loop ------------------------------------------------------------------
    def apply(self, config: TrafficConfig) -> None:
        """New weights and policy; a changed weight starts a new shared epoch at the next sync."""
        config.check_against({p: set(names) for p, names in self._variants.items()})
        self.config = config
        self.weights = configured_weights(self._variants, config)
        previous = getattr(self, "_view", {})
        self._view = {
            profile: {
                name: _kept(previous.get(profile, {}).get(name), weight)
                for name, weight in weights.items()
            }
            for profile, weights in self.weights.items()
        }
        if not self.store.shared:  # alone: the state is this process's, nothing to wait for
            self.sync()

    @property
    def policy(self) -> RollbackPolicy:
        return self.config.rollback

    def fresh(self) -> bool:
        """Whether this replica's view of the shared state is recent enough to route by."""
        return self._synced_at is not None and self._clock() - self._synced_at < STALE_AFTER_S

    def choose(self, profile: str, route_key: str | None = None, pinned: str | None = None) -> str:
        view = self._view[profile]
        if pinned is not None:
            if pinned not in view:
                raise KeyError(pinned)
            return pinned
        if not self.fresh():
            return STABLE_VARIANT
        total = sum(state["weight"] for state in view.values())
        if total <= 0:
            return STABLE_VARIANT
        point = (_bucket(profile, route_key) if route_key else self._random.random()) * total
        for name, state in view.items():
            point -= state["weight"]
            if point < 0 and state["weight"] > 0:
                return name
        return next(name for name, state in reversed(view.items()) if state["weight"] > 0)

    def record(self, profile: str, variant: str, ok: bool, latency_s: float) -> None:
        """Count one unpinned request's outcome: O(1); judged at the next sync."""
        self._buckets.add(f"{profile}/{variant}", self._clock(), ok, latency_s)
        if not ok and variant != STABLE_VARIANT and self.on_canary_failure is not None:
            self.on_canary_failure()

    def prepare(self) -> tuple:
        """The arguments of `exchange` (immutable copies), taken on the event loop."""
        now = self._clock()
        payload = self._buckets.snapshot(self.policy, now)
        return (self.store, self.app, self.replica, payload, self.weights, self.policy, now)

    def adopt(self, view: dict, decided: list[Rollback], at: float) -> list[Rollback]:
        self._view = view
        self._synced_at = at
        self.rollbacks += len(decided)
        for rollback in decided:
            logger.warning(
                "canary rollback: profile %s variant %s: %s",
                rollback.profile,
                rollback.variant,
                rollback.reason,
            )
        return decided

    def sync(self) -> list[Rollback]:
        """prepare + exchange + adopt inline (the in-process store; unit tests)."""
        arguments = self.prepare()
        return self.adopt(*exchange(*arguments), at=arguments[-1])

    def status(self, profile: str) -> dict[str, dict]:
        return self._view[profile]

    def view(self) -> dict[str, dict[str, dict]]:
        return self._view

    def shared_state(self) -> dict:
        age = None if self._synced_at is None else round(self._clock() - self._synced_at, 3)
        return {"fresh": self.fresh(), "age_s": age, "replica": self.replica}


async def keep_synced(
    traffic: TrafficManager,
    on_rollback: Callable[[Rollback], None],
    interval_s: float = SYNC_S,
) -> None:
    """Run on the replica's event loop: exchange with the shared state every interval, or
    sooner (but at most every MIN_SYNC_S) after a canary failure, so a failing canary is
    judged within a fraction of a second. The store's blocking I/O runs on a worker thread,
    with immutable inputs."""
    woken = asyncio.Event()
    traffic.on_canary_failure = woken.set
    # A thread of its own: behind other work in the default pool, a failing canary's burst
    # would be judged late.
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clipfleet-traffic")
    loop = asyncio.get_running_loop()
    while True:
        try:
            arguments = traffic.prepare()
            view, decided = await loop.run_in_executor(executor, exchange, *arguments)
            for rollback in traffic.adopt(view, decided, at=arguments[-1]):
                on_rollback(rollback)
        except Exception as exc:  # the holder is away: stable only once the view goes stale
            logger.warning("traffic state not synced: %s", exc)
        await asyncio.sleep(MIN_SYNC_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), interval_s - MIN_SYNC_S)
        woken.clear()


def _kept(state: dict | None, weight: float) -> dict:
    """A variant's view until the next sync: as it was if its weight is unchanged."""
    if state is not None and state["configured_weight"] == weight:
        return state
    return {
        "weight": weight,
        "configured_weight": weight,
        "rolled_back": False,
        "rollback_reason": None,
        "window_requests": 0,
        "window_errors": 0,
        "window_p95_s": None,
    }

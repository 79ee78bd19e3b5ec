"""What every encoder replica's serving methods share: blame marked where a failure happens,
and the stall guard that gets a hung replica replaced.

**Blame.** `@serving` wraps each method an ingress calls to get work done (embed_*, token
counts included). A failure raised inside it that is not a ClipfleetError (a client's mistake
such as an undecodable image keeps its own 4xx) becomes a ModelServingError: the one kind of
error the canary guard counts against the variant that served the request (`variant_fault`).
Nothing raised elsewhere (the fetcher, DNS, the URL, validation, the deadline, a client hanging
up) carries the mark, whatever its class, so no client input can make a variant look bad.

**Stalls.** `StallGuard.watch` times each forward from inside its thread, once it holds the
node's forward lease. Serve calls the replica's `check_health` every `health_check_period_s`
on the replica's user-code event loop, which a forward running in a worker thread leaves free;
while a forward has run longer than `stall_limit_s` the check fails. After Serve's threshold of
consecutive failures the controller stops routing to the replica and replaces it; a moment
later the guard fails everything still waiting here (the hung forward's batch and the queue
behind it) with a retryable ReplicaStalledError (503 + Retry-After), which the ingress sends
once more, to a live replica, instead of letting it wait out Serve's graceful drain.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from clipfleet.config import EncoderConfig
from clipfleet.errors import ClipfleetError, ModelServingError, ReplicaStalledError
from clipfleet.replicas.preempt import park_listener
from clipfleet.rollout.store import MemoryStore, SharedStore

logger = logging.getLogger("ray.serve")

# Ray Serve 2.60 marks a replica unhealthy after this many failed health checks in a row
# (ray.serve._private.constants.REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD; a unit test pins it).
UNHEALTHY_AFTER_FAILED_CHECKS = 3
# After the failure that makes it unhealthy: time for the controller (a 0.1 s control loop) to
# stop routing here and tell the routers, before the waiting calls are sent again elsewhere.
RELEASE_DELAY_S = 1.0


def serving(method: Callable) -> Callable:
    """An encoder's serving method: refused at once on a replica that stalled, and its failures
    marked at their origin (see the module docstring)."""

    @functools.wraps(method)
    async def serve(self, *args: Any, **kwargs: Any) -> Any:
        self.guard.refuse_if_stalled()
        try:
            return await method(self, *args, **kwargs)
        except ClipfleetError:
            raise
        except Exception as exc:
            logger.exception("%s failed while serving", method.__qualname__)
            raise ModelServingError(
                f"{type(exc).__name__} in {method.__qualname__} on replica {self.replica_id}: "
                f"{str(exc)[:200]}"
            ) from exc

    return serve


class StallGuard:
    """One per encoder replica: times the running forward, answers the health check, releases
    what waits behind a hung forward, and runs the `fault_stall_s` drill.

    `drills` / `drill_key`: where the replicas of one deployment claim the drill's slots (the
    application's shared store under Serve; an in-process one otherwise)."""

    def __init__(self, replica_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.replica_id = replica_id
        self._clock = clock
        # when each running forward started (or last resumed), by its thread: a bulk forward
        # parked for interactive work (clipfleet/replicas/preempt.py) is not timed while parked,
        # and runs beside the one run in its stead
        self._forwards_started: dict[int, float] = {}
        self.slowest_forward_s = 0.0  # the longest timed run (parked time left out)
        self.stall_next_s = 0.0  # the drill: the next forward blocks its thread this long
        self.failed_checks = 0
        self.stalled = False  # released: everything here fails with ReplicaStalledError
        self._releasing = False
        self.drills: SharedStore = MemoryStore()
        self.drill_key = "local"

    def watch(self, forward: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`forward`, timed from its own thread (inside the node's lease, so waiting for the
        lease is not stalling)."""

        def watched(items: Any) -> Any:
            thread = threading.get_ident()
            self._forwards_started[thread] = self._clock()

            def parked(now_parked: bool) -> None:
                # parked for interactive work: waiting by design, timed again from its resume
                if now_parked:
                    self._stop_timing(thread)
                else:
                    self._forwards_started[thread] = self._clock()

            try:
                stall_s, self.stall_next_s = self.stall_next_s, 0.0
                if stall_s:
                    time.sleep(stall_s)  # the drill: a forward thread that hangs
                with park_listener(parked):
                    return forward(items)
            finally:
                self._stop_timing(thread)

        return watched

    def _stop_timing(self, thread: int) -> None:
        """The forward on `thread` ended or parked: its timed run counts for the slowest."""
        started = self._forwards_started.pop(thread, None)
        if started is not None:
            self.slowest_forward_s = max(self.slowest_forward_s, self._clock() - started)

    def running_for(self) -> float:
        """Seconds the oldest running forward has run; 0 when none runs."""
        started = min(self._forwards_started.values(), default=None)
        return 0.0 if started is None else self._clock() - started

    def stalled_error(self) -> ReplicaStalledError:
        return ReplicaStalledError("a model replica stalled and is being replaced; retry shortly")

    def refuse_if_stalled(self) -> None:
        if self.stalled:
            raise self.stalled_error()

    def check(self, limit_s: float, release: Callable[[Callable], None]) -> None:
        """The health check: raises while a forward has run past `limit_s` (and for good once
        released). At the failure that makes Serve replace the replica, schedules
        `release(failure)` RELEASE_DELAY_S later, on this event loop."""
        running_s = self.running_for()
        if not self.stalled and running_s <= limit_s:
            self.failed_checks = 0
            return
        self.failed_checks += 1
        if self.failed_checks >= UNHEALTHY_AFTER_FAILED_CHECKS and not self._releasing:
            self._releasing = True
            logger.error(
                "a forward has run %.1f s (stall_limit_s %s): releasing what waits here in "
                "%.1f s; Serve replaces this replica",
                running_s,
                limit_s,
                RELEASE_DELAY_S,
            )
            loop = asyncio.get_running_loop()
            loop.call_later(RELEASE_DELAY_S, self._release, release)
        raise ReplicaStalledError(
            f"a forward has run {running_s:.1f} s, past stall_limit_s {limit_s}"
        )

    def _release(self, release: Callable[[Callable], None]) -> None:
        self.stalled = True
        release(self.stalled_error)

    async def apply_drill(self, config: EncoderConfig) -> None:
        """`fault_stall_s` > 0: if this replica claims one of `fault_stall_replicas` slots, its
        next forward blocks that long (once). 0: the drill is over, its slots are freed."""
        if config.fault_stall_s <= 0:
            await self._store_io(_free_slots, self.drills, self.drill_key)
            return
        claimed = await self._store_io(
            _claim_slot, self.drills, self.drill_key, config.fault_stall_replicas, self.replica_id
        )
        if claimed:
            self.stall_next_s = config.fault_stall_s
            logger.warning("fault_stall_s drill: the next forward blocks %s s", self.stall_next_s)

    async def _store_io(self, function: Callable, *args: Any) -> Any:
        if self.drills.shared:  # a GCS round trip: off the event loop
            return await asyncio.to_thread(function, *args)
        return function(*args)


def _claim_slot(store: SharedStore, key: str, slots: int, replica_id: str) -> bool:
    """Whether this replica takes one of the drill's `slots` now (never twice in one drill)."""
    if replica_id.encode() in store.read_prefix(f"{key}/").values():
        return False
    return any(store.put(f"{key}/{slot}", replica_id.encode(), False) for slot in range(slots))


def _free_slots(store: SharedStore, key: str) -> None:
    for slot_key in store.read_prefix(f"{key}/"):
        store.delete(slot_key)

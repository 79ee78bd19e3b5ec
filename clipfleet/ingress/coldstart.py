"""Scale to zero: profiles whose encoders run no replica, and what a request to one does.

A deployment with `autoscaling_config.min_replicas: 0` runs no replica while idle; a request
sent to it waits in Serve's handle queue while the autoscaler starts one. Before sending, the
ingress asks here whether the profile is cold (a deployment of it with no RUNNING replica, in
the readiness view's last look at the Serve controller) and how long its cold start takes:
what its replicas measured from their constructor's start to ready (model load, warm-up,
embedding space) and published in the application's shared store, so the figure outlives
them; never measured, `cold_start_estimate_s`. A cold start that fits in the request's deadline
is waited for; one that does not gets 503 + Retry-After (the estimate) at once, and the
deployment is woken so the retry finds it warm.

Nothing here sends a request to a cold deployment by itself: /v1/status and /v1/models
describe only warm ones, so monitoring never keeps a profile from scaling to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from clipfleet.errors import ServiceUnavailableError
from clipfleet.rollout.store import SharedStore

logger = logging.getLogger("ray.serve")

STORE_PREFIX = "cold_start/"
MEASURED_REFRESH_S = 5.0
WAKE_TIMEOUT_S = 600.0


def store_key(app: str, deployment: str) -> str:
    return f"{app}/{STORE_PREFIX}{deployment}"


def publish(store: SharedStore, app: str, deployment: str, seconds: float) -> None:
    """A replica's measured cold start, for the ingresses (the latest replica's wins)."""
    payload = json.dumps({"seconds": round(seconds, 3), "at": time.time()}).encode()
    store.put(store_key(app, deployment), payload)


class ColdStarts:
    """running(deployment): its RUNNING replicas (None: unknown, e.g. outside Serve);
    wake(deployment): send it a request that makes Serve start a replica."""

    def __init__(
        self,
        profiles: Mapping[str, list[str]],
        running: Callable[[str], int | None],
        wake: Callable[[str], Any],
        default_estimate_s: float,
        store: SharedStore | None = None,
        app: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """profiles: profile -> the deployments a request to it needs."""
        self.profiles = {name: list(deployments) for name, deployments in profiles.items()}
        self._running = running
        self._wake = wake
        self.default_estimate_s = default_estimate_s
        self._store = store
        self._app = app
        self._clock = clock
        self.measured: dict[str, float] = {}
        self._measured_at: float | None = None
        self._wakes: set[asyncio.Task] = set()
        self.refused = 0

    def cold(self, profile: str) -> list[str]:
        """The profile's deployments running no replica now."""
        return [d for d in self.profiles.get(profile, ()) if self.is_cold(d)]

    def estimate_s(self, deployments: list[str]) -> float:
        """The longest measured cold start of `deployments` (never measured: the default)."""
        return max((self.measured.get(d, self.default_estimate_s) for d in deployments), default=0)

    async def refresh_measured(self) -> None:
        """Re-read the replicas' published cold starts (at most every MEASURED_REFRESH_S)."""
        now = self._clock()
        if self._store is None or (
            self._measured_at is not None and now - self._measured_at < MEASURED_REFRESH_S
        ):
            return
        self._measured_at = now
        prefix = f"{self._app}/{STORE_PREFIX}"
        with contextlib.suppress(Exception):  # a figure, never a reason to fail a request
            found = await asyncio.to_thread(self._store.read_prefix, prefix)
            for key, raw in found.items():
                self.measured[key[len(prefix) :]] = float(json.loads(raw)["seconds"])

    def is_cold(self, deployment: str) -> bool:
        return self._running(deployment) == 0

    async def admit(self, profile: str, deployments: list[str], budget_s: float) -> None:
        """Return when a request to `profile` that needs `deployments` may go on (all warm, or
        a cold start that fits in budget_s: Serve's queue holds it meanwhile); raise 503 +
        Retry-After when it cannot fit."""
        cold = [d for d in deployments if self.is_cold(d)]
        if not cold:
            return
        await self.refresh_measured()
        estimate = self.estimate_s(cold)
        if estimate <= budget_s:
            logger.info("profile %s is cold; waiting ~%.1f s for %s", profile, estimate, cold)
            return
        for deployment in cold:
            self.wake(deployment)
        self.refused += 1
        raise ServiceUnavailableError(
            f"profile {profile!r} is starting from zero replicas (about {estimate:.0f} s, longer "
            "than this request's deadline); retry after Retry-After",
            "profile",
            retry_after_s=max(1, math.ceil(estimate)),
        )

    def wake(self, deployment: str) -> None:
        """Start a replica of `deployment` without waiting for it (one wake at a time)."""
        name = f"wake:{deployment}"
        if any(task.get_name() == name for task in self._wakes):
            return

        async def waking() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._wake(deployment), WAKE_TIMEOUT_S)

        task = asyncio.get_running_loop().create_task(waking(), name=name)
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    def view(self) -> dict[str, dict[str, Any]]:
        """Per profile: scaled to zero now, its cold-start time (measured, or the estimate)."""
        view = {}
        for profile, deployments in self.profiles.items():
            measured = [self.measured[d] for d in deployments if d in self.measured]
            view[profile] = {
                "scaled_to_zero": bool(self.cold(profile)),
                "cold_start_s": round(self.estimate_s(deployments), 3),
                "cold_start_measured": len(measured) == len(deployments),
            }
        return view

"""`/readyz` from a cached view that a background task refreshes every REFRESH_S.

Ready = every deployment of the application has a RUNNING replica, as the Serve controller
reports it (one `serve.status()` call for the whole app, never a request to the deployments:
probes take no request slot, so a busy app stays ready). A replica is RUNNING only after its
constructor returned, and the encoders' constructors run their warm-up forward pass. Each
entry also shows the deployment's Serve status and message and its replicas by state, so a
replica that failed its health check (an encoder whose forward hung past `stall_limit_s`:
clipfleet/replicas/serving.py) shows as `status: UNHEALTHY` and a STOPPING replica while Serve
replaces it; the app stays ready while another replica runs. A deployment scaled to zero
(Serve reports it HEALTHY or UPSCALING with no replica RUNNING: `min_replicas: 0`) is ready
too, `scaled_to_zero`: its first request waits for a replica (clipfleet/ingress/coldstart.py).
What each deployment serves (model, weights, device) is static: asked once with `describe`,
off the probe path, and cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from clipfleet.ingress.serve_state import deployment_states, running_replicas

logger = logging.getLogger("ray.serve")

REFRESH_S = 1.0
STALE_AFTER_S = 10.0  # a view this old (the controller unreachable) is not ready
DESCRIBE_TIMEOUT_S = 5.0
SUMMARY_KEYS = ("model", "weights", "random_weights", "device")
SCALED_TO_ZERO_STATES = frozenset({"HEALTHY", "UPSCALING"})


class ReadinessView:
    """checks: {readiness key (e.g. `fast.clip.canary`): (deployment name, describe())}."""

    def __init__(
        self,
        checks: Mapping[str, tuple[str, Callable[[], Awaitable[dict]]]],
        states: Callable[[], tuple[str | None, dict | None]] = deployment_states,
        clock=time.monotonic,
    ) -> None:
        self._checks = dict(checks)
        self._states = states
        self._clock = clock
        self._summaries: dict[str, dict] = {}
        self._view: tuple[bool, dict] = (False, {k: _waiting() for k in self._checks})
        self._refreshed_at: float | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(REFRESH_S)

    async def refresh(self) -> None:
        _, deployments = await asyncio.to_thread(self._states)
        if deployments is None:
            raise RuntimeError("not inside a Serve application")
        status = {}
        for key, (deployment, _) in self._checks.items():
            running = running_replicas(deployments, deployment) or 0
            entry = {"ready": running > 0, "deployment": deployment, "replicas_running": running}
            entry.update(_serve_view(deployments.get(deployment)))
            if running == 0 and entry.get("status") in SCALED_TO_ZERO_STATES:
                entry.update(ready=True, scaled_to_zero=True)
            status[key] = {**entry, **self._summaries.get(key, {})}
        missing = [  # describing a cold deployment would start a replica: only warm ones
            k
            for k in self._checks
            if status[k]["replicas_running"] > 0 and k not in self._summaries
        ]
        if missing:
            await self._describe(missing)
            for key in missing:
                status[key].update(self._summaries.get(key, {}))
        self._view = (all(entry["ready"] for entry in status.values()), status)
        self._refreshed_at = self._clock()

    async def _describe(self, keys: list[str]) -> None:
        answers = await asyncio.gather(
            *(asyncio.wait_for(_call(self._checks[k][1]), DESCRIBE_TIMEOUT_S) for k in keys),
            return_exceptions=True,
        )
        for key, answer in zip(keys, answers, strict=True):
            if isinstance(answer, dict):
                self._summaries[key] = {k: answer[k] for k in SUMMARY_KEYS if k in answer}

    def running(self, deployment: str) -> int | None:
        """RUNNING replicas of `deployment` at the last refresh (None: not known yet)."""
        if self._refreshed_at is None:
            return None
        for entry in self._view[1].values():
            if entry.get("deployment") == deployment:
                return entry.get("replicas_running")
        return None

    def current(self) -> tuple[bool, dict]:
        ready, status = self._view
        if self._refreshed_at is None:
            return False, status
        age_s = self._clock() - self._refreshed_at
        if age_s > STALE_AFTER_S:
            stale = {k: {**v, "ready": False, "reason": "stale"} for k, v in status.items()}
            return False, stale
        return ready, status


async def _call(describe: Callable[[], Awaitable[dict]]) -> Any:
    return await describe()


def _serve_view(state: dict | None) -> dict:
    """What Serve says of a deployment: status, its message when not healthy, replicas by
    state."""
    if state is None:
        return {}
    view = {"status": state["status"], "replicas": dict(state["replicas"])}
    if state.get("message") and state["status"] != "HEALTHY":
        view["message"] = state["message"]
    return view


def _waiting() -> dict:
    return {"ready": False, "reason": "starting"}

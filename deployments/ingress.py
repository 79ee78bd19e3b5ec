"""Ingress deployment: the FastAPI app, holding handles to every other deployment."""

from __future__ import annotations

import asyncio
import contextlib

from ray import serve
from ray.serve.handle import DeploymentHandle

from clipfleet.api.app import create_app
from clipfleet.api.deps import set_service
from clipfleet.config import AppArgs
from clipfleet.fleet_store import RayKVStore
from clipfleet.observability import metrics
from clipfleet.observability.tracing import trace_handles
from clipfleet.readiness import ReadinessView
from clipfleet.service import ClipfleetService
from clipfleet.traffic import Rollback, TrafficConfig, TrafficManager, keep_synced

app = create_app()
GAUGE_REFRESH_S = 5.0  # Ray 2.60 drops a gauge series not set again within ~2 export intervals


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        args: AppArgs,
        fetcher: DeploymentHandle,
        scorer: DeploymentHandle,
        clip_encoders: dict[str, dict[str, DeploymentHandle]],
        resnet_encoders: dict[str, DeploymentHandle],
        multiplexed_encoders: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        context = serve.get_replica_context()
        # One traffic state per application, in Ray's internal KV: every replica reads it
        # before sending canary traffic, and it outlives any replica.
        traffic = TrafficManager(
            {name: list(spec.variants) for name, spec in args.profiles.items()},
            store=RayKVStore(),
            app=context.app_name,
            replica=context.replica_id.unique_id,
        )
        self.service = ClipfleetService(
            args,
            *trace_handles([fetcher, scorer, clip_encoders, resnet_encoders]),
            trace_handles(multiplexed_encoders or {}),
            traffic,
        )
        set_service(self.service)
        self._background: list[asyncio.Task] = []
        self._traffic_sync: asyncio.Task | None = None
        # Serve runs the constructor on the replica's event loop (else: at reconfigure).
        with contextlib.suppress(RuntimeError):
            self._start_background()

    async def reconfigure(self, user_config: dict) -> None:
        """user_config: TrafficConfig (variant weights, rollback policy); validated, unknown
        keys and unknown profiles/variants rejected; applied without a restart. Async, so it
        runs on the event loop that routes requests (never beside it on a thread)."""
        self.service.apply_traffic(TrafficConfig(**(user_config or {})))
        if not self._background:
            self._start_background()
        if self._traffic_sync is None:
            # Only now: a replica syncing with the default config (before its user_config)
            # would take the defaults for an operator's weight change and reset the rollbacks.
            # Without a user_config there is no canary weight, so nothing to sync.
            loop = asyncio.get_running_loop()
            self._traffic_sync = loop.create_task(keep_synced(self.service.traffic, _on_rollback))

    def _start_background(self) -> None:
        loop = asyncio.get_running_loop()
        checks = {
            key: (deployment, handle.describe.remote)
            for key, (deployment, handle) in self.service.deployment_checks().items()
        }
        self.service.readiness_view = ReadinessView(checks)
        self.service.readiness_view.start()
        self._background = [loop.create_task(self._keep_gauges_fresh())]

    async def _keep_gauges_fresh(self) -> None:
        """The clipfleet_traffic_weight gauge (per replica: Ray labels it with `replica`),
        set on the event loop from the immutable traffic view."""
        while True:
            metrics.record_traffic(self.service.traffic_view())
            await asyncio.sleep(GAUGE_REFRESH_S)


def _on_rollback(rollback: Rollback) -> None:
    metrics.record_rollback(rollback.profile, rollback.variant, rollback.reason)

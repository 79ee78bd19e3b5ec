"""What an ingress replica runs beside its routes, as plain code unit tests can drive: the
service over traced handles and the application's shared traffic state, the readiness view,
the traffic gauge refresher, and the traffic sync that starts with the first user_config.
`deployments/ingress.py` only adds Serve's decorators and replica context."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from clipfleet.config import AppArgs
from clipfleet.ingress.coldstart import ColdStarts
from clipfleet.ingress.graph import Graph
from clipfleet.ingress.priority import prioritize_handles
from clipfleet.ingress.readiness import ReadinessView
from clipfleet.ingress.service import ClipfleetService
from clipfleet.observability import metrics
from clipfleet.observability.tracing import trace_handles
from clipfleet.rollout.store import SharedStore
from clipfleet.rollout.traffic import Rollback, TrafficConfig, TrafficManager, keep_synced

GAUGE_REFRESH_S = 5.0  # Ray 2.60 drops a gauge series not set again within ~2 export intervals


def replica_service(
    args: AppArgs, graph: Graph, store: SharedStore, app: str, replica: str
) -> ClipfleetService:
    """The service over the graph's deployment handles, traced when tracing is on, the
    encoders' embedding calls and the fetcher's fetches carrying the request's priority
    class. One traffic state per application, in the shared store: every replica reads it
    before sending canary traffic, and it outlives any replica."""

    def classed(handles: Any) -> Any:
        return prioritize_handles(trace_handles(handles))

    return ClipfleetService(
        args,
        fetcher=classed(graph.fetcher),
        scorer=trace_handles(graph.scorer),
        clip_encoders=classed(graph.clip_encoders),
        resnet_encoders=classed(graph.resnet_encoders),
        multiplexed_encoders=classed(graph.multiplexed_encoders),
        traffic=TrafficManager(
            {name: list(spec.variants) for name, spec in args.profiles.items()},
            store=store,
            app=app,
            replica=replica,
        ),
    )


class IngressRuntime:
    """`make_view` builds the readiness view from the checks (tests pass one that reads no
    Serve controller)."""

    def __init__(
        self,
        service: ClipfleetService,
        gauge_refresh_s: float = GAUGE_REFRESH_S,
        make_view: Callable[[dict], ReadinessView] = ReadinessView,
        store: SharedStore | None = None,
        app: str = "",
    ) -> None:
        """store, app: where the encoders publish their measured cold starts."""
        self.service = service
        self.store = store
        self.app = app
        self.gauge_refresh_s = gauge_refresh_s
        self.make_view = make_view
        self.tasks: list[asyncio.Task] = []
        self.traffic_sync: asyncio.Task | None = None

    def start(self) -> None:
        """Readiness view and gauge refresher, once; call on the replica's event loop."""
        if self.tasks:
            return
        checks = self.service.fleet.describe_checks()
        fleet = self.service.fleet
        fleet.readiness_view = self.make_view(checks)
        fleet.readiness_view.start()
        fleet.cold_starts = self._cold_starts(checks)
        self.tasks = [asyncio.get_running_loop().create_task(self._keep_gauges_fresh())]

    def _cold_starts(self, checks: dict) -> ColdStarts:
        describes = dict(checks.values())  # deployment -> describe()
        service = self.service
        profiles = {
            name: [d for key, (d, _) in checks.items() if key.split(".")[0] == name]
            for name in service.profiles
        }
        return ColdStarts(
            profiles,
            service.fleet.readiness_view.running,
            lambda deployment: describes[deployment](),
            service.args.cold_start_estimate_s,
            self.store,
            self.app,
        )

    async def reconfigure(self, user_config: dict | None) -> None:
        """user_config: TrafficConfig (variant weights, rollback policy); validated, unknown
        keys and unknown profiles/variants rejected; applied without a restart."""
        self.service.apply_traffic(TrafficConfig(**(user_config or {})))
        self.start()
        if self.traffic_sync is None:
            # Only now: a replica syncing with the default config (before its user_config)
            # would take the defaults for an operator's weight change and reset the rollbacks.
            # Without a user_config there is no canary weight, so nothing to sync.
            loop = asyncio.get_running_loop()
            self.traffic_sync = loop.create_task(keep_synced(self.service.traffic, _on_rollback))

    def stop(self) -> None:
        """Cancel the gauge refresher and traffic sync (the readiness view runs for the
        replica's life)."""
        for task in [*self.tasks, self.traffic_sync]:
            if task is not None:
                task.cancel()

    async def _keep_gauges_fresh(self) -> None:
        """The clipfleet_traffic_weight gauge (per replica: Ray labels it with `replica`),
        set on the event loop from the immutable traffic view."""
        while True:
            metrics.record_traffic(self.service.traffic_view())
            await asyncio.sleep(self.gauge_refresh_s)


def _on_rollback(rollback: Rollback) -> None:
    metrics.record_rollback(rollback.profile, rollback.variant, rollback.reason)

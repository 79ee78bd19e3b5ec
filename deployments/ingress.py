"""Ingress deployment: the FastAPI app, holding handles to every other deployment."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from clipfleet.api.app import create_app
from clipfleet.api.deps import set_service
from clipfleet.config import AppArgs
from clipfleet.observability import metrics
from clipfleet.observability.tracing import trace_handles
from clipfleet.service import ClipfleetService
from clipfleet.traffic import TrafficConfig

app = create_app()


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
        self.service = ClipfleetService(
            args,
            *trace_handles([fetcher, scorer, clip_encoders, resnet_encoders]),
            trace_handles(multiplexed_encoders or {}),
        )
        self.service.rollback_listeners.append(metrics.record_rollback)
        set_service(self.service)
        metrics.keep_gauges_fresh(self._record_traffic)

    def reconfigure(self, user_config: dict) -> None:
        """user_config: TrafficConfig (variant weights, rollback policy); validated, unknown
        keys and unknown profiles/variants rejected; applied without a restart."""
        self.service.apply_traffic(TrafficConfig(**(user_config or {})))
        self._record_traffic()

    def _record_traffic(self) -> None:
        """The clipfleet_traffic_weight gauge: effective weights per profile variant."""
        metrics.record_traffic(
            {name: self.service.traffic.status(name) for name in self.service.profiles}
        )

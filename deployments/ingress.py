"""Ingress deployment: the FastAPI app, holding handles to every other deployment."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from clipfleet.api.app import create_app
from clipfleet.api.deps import set_service
from clipfleet.config import AppArgs
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
    ) -> None:
        self.service = ClipfleetService(args, fetcher, scorer, clip_encoders, resnet_encoders)
        set_service(self.service)

    def reconfigure(self, user_config: dict) -> None:
        """user_config: TrafficConfig (variant weights, rollback policy); validated, unknown
        keys and unknown profiles/variants rejected; applied without a restart."""
        self.service.apply_traffic(TrafficConfig(**(user_config or {})))

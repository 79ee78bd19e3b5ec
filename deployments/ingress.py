"""Ingress deployment: the FastAPI app, holding handles to every other deployment."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from clipfleet.api.app import create_app
from clipfleet.api.deps import set_service
from clipfleet.config import AppArgs
from clipfleet.service import ClipfleetService

app = create_app()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        args: AppArgs,
        fetcher: DeploymentHandle,
        scorer: DeploymentHandle,
        clip_encoders: dict[str, DeploymentHandle],
        resnet_encoders: dict[str, DeploymentHandle],
    ) -> None:
        set_service(ClipfleetService(args, fetcher, scorer, clip_encoders, resnet_encoders))

"""ResNet (any torchvision classifier) feature deployment, batched."""

from __future__ import annotations

from clipfleet.config import FetchLimits, ResNetSpec, random_weights_enabled
from clipfleet.replicas import encoder
from deployments._context import replica_id
from deployments._encoder import (
    ServeBatchQueue,
    encoder_deployment,
    fleet_drills,
    node_lease,
    prepare_replica,
    publish_cold_start,
)


@encoder_deployment
class ResNetEncoder(encoder.ResNetEncoder):
    def __init__(self, spec: ResNetSpec, limits: FetchLimits | None = None) -> None:
        plan = prepare_replica()
        lease = node_lease(plan)
        super().__init__(
            spec, plan, random_weights_enabled(), replica_id(), lease, limits, ServeBatchQueue
        )
        fleet_drills(self.guard)
        publish_cold_start(self)

"""CLIP encoder deployment: one per profile/variant, batched image and text encoding."""

from __future__ import annotations

from clipfleet.config import ClipModelSpec, FetchLimits, random_weights_enabled
from clipfleet.replicas import clip
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
class ClipEncoder(clip.ClipEncoder):
    def __init__(self, spec: ClipModelSpec, limits: FetchLimits | None = None) -> None:
        plan = prepare_replica()
        lease = node_lease(plan)
        super().__init__(
            spec, plan, random_weights_enabled(), replica_id(), lease, limits, ServeBatchQueue
        )
        fleet_drills(self.guard)
        publish_cold_start(self)

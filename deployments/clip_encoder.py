"""CLIP encoder deployment: one per profile/variant, batched image and text encoding."""

from __future__ import annotations

from ray import serve

from clipfleet.config import ClipModelSpec, random_weights_enabled
from clipfleet.replicas import clip
from deployments._context import replica_id
from deployments._encoder import (
    HEALTH_CHECK_PERIOD_S,
    BatchedImagesAndTexts,
    fleet_drills,
    node_lease,
    prepare_replica,
)


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
)
class ClipEncoder(BatchedImagesAndTexts, clip.ClipEncoder):
    def __init__(self, spec: ClipModelSpec) -> None:
        plan = prepare_replica()
        super().__init__(spec, plan, random_weights_enabled(), replica_id(), node_lease(plan))
        fleet_drills(self.guard)

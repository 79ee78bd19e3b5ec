"""What the encoder shells share: the replica's device and forward lease, `@serve.batch`."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from clipfleet.ingress.coldstart import publish
from clipfleet.models.base import TextTokens
from clipfleet.models.device import DevicePlan, choose_device, set_torch_threads
from clipfleet.models.sizing import ForwardLease, forward_slots, forward_threads
from clipfleet.replicas.embedding import DEFAULT_CONFIG
from clipfleet.replicas.serving import StallGuard
from clipfleet.rollout.store import RayKVStore

# @serve.batch hands batches to the ForwardScheduler, which merges those that queue behind a
# running forward; up to this many may be waiting there (each holds at least one item).
MERGEABLE_BATCHES = 64

# How often Serve calls an encoder's check_health: a forward past `stall_limit_s` gets the
# replica replaced within about 3 periods (Serve's threshold) of it.
HEALTH_CHECK_PERIOD_S = 2.0

# Every encoder's @serve.deployment options (a Serve config's entry overrides them).
encoder_deployment = serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
)

# The encoders' @serve.batch: its sizes are replaced live by reconfigure().
mergeable_batch = serve.batch(
    max_batch_size=DEFAULT_CONFIG.max_batch_size,
    batch_wait_timeout_s=DEFAULT_CONFIG.batch_wait_timeout_s,
    max_concurrent_batches=MERGEABLE_BATCHES,
)


def prepare_replica() -> DevicePlan:
    """Choose the device and size torch's thread pool to the node's cores (see
    clipfleet.models.sizing: a CPU reservation is a scheduling hint, not a core budget)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    set_torch_threads(forward_threads(cpus))
    return choose_device()


def fleet_drills(guard: StallGuard) -> None:
    """The `fault_stall_s` drill's slots, per deployment, in the application's shared store."""
    context = serve.get_replica_context()
    guard.drills = RayKVStore()
    guard.drill_key = f"{context.app_name}/fault_stall/{context.deployment}"


def publish_cold_start(encoder: Any) -> None:
    """The replica's measured cold start, in the application's shared store
    (clipfleet.ingress.coldstart)."""
    context = serve.get_replica_context()
    publish(RayKVStore(), context.app_name, context.deployment, encoder.cold_start_s)


def node_lease(plan: DevicePlan) -> ForwardLease | None:
    """The node's CPU forward lease, shared with the other encoders on it; none on a GPU."""
    slots = forward_slots()
    return ForwardLease(slots) if plan.device.type == "cpu" and slots else None


class ServeBatchQueue:
    """An encoder core's batch queue under Serve (clipfleet.replicas.core.BatchQueue): each item
    joins `@serve.batch`'s queue (list in, list out: one model id per batch), whose batches go
    to the core's forward; resized live by reconfigure. Serve keeps one queue per decorated
    function in the process, which holds one replica."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def resizable(self) -> list:
        return [self.image, self.text]

    @mergeable_batch
    async def image(self, pixel_batch: list[torch.Tensor]) -> list[np.ndarray]:
        return await self.core._forward_images(pixel_batch)

    @mergeable_batch
    async def text(self, tokens: list[TextTokens]) -> list[np.ndarray]:
        return await self.core._forward_texts(tokens)

"""What the encoder shells share: the replica's device and lease, its id, `@serve.batch`."""

from __future__ import annotations

import ray
from ray import serve

from clipfleet.models.device import DevicePlan, choose_device, set_torch_threads
from clipfleet.models.sizing import ForwardLease, forward_slots, forward_threads
from clipfleet.replicas.encoder import DEFAULT_CONFIG

# @serve.batch hands batches to the ForwardScheduler, which merges those that queue behind a
# running forward; up to this many may be waiting there (each holds at least one item).
MERGEABLE_BATCHES = 64

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


def node_lease(plan: DevicePlan) -> ForwardLease | None:
    """The node's CPU forward lease, shared with the other encoders on it; none on a GPU."""
    slots = forward_slots()
    return ForwardLease(slots) if plan.device.type == "cpu" and slots else None


def replica_id() -> str:
    return serve.get_replica_context().replica_id.unique_id

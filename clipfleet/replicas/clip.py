"""A CLIP encoder replica without Ray: the encoder core over one CLIP model, images and texts."""

from __future__ import annotations

from clipfleet.config import ClipModelSpec, FetchLimits
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import DevicePlan
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.sizing import ForwardLease
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.core import DirectQueue, QueueFactory
from clipfleet.replicas.encoder import ImageEncoder


class ClipEncoder(ImageEncoder):
    """A CLIP (open_clip or transformers) on the spec's runtime: image and text batches."""

    def __init__(
        self,
        spec: ClipModelSpec,
        plan: DevicePlan,
        random_weights: bool = False,
        replica_id: str = LOCAL_REPLICA,
        lease: ForwardLease | None = None,
        limits: FetchLimits | None = None,
        queue: QueueFactory = DirectQueue,
    ) -> None:
        model = apply_runtime(load_clip_model(spec, plan, random_weights), spec)
        super().__init__(model, replica_id, lease, limits, queue, kinds=("image", "text"))

"""Pick the CLIP backend named in a spec."""

from __future__ import annotations

from clipfleet.config import ClipModelSpec
from clipfleet.models.base import ClipModel
from clipfleet.models.device import DevicePlan


def load_clip_model(spec: ClipModelSpec, plan: DevicePlan, random_weights: bool) -> ClipModel:
    if spec.backend == "open_clip":
        from clipfleet.models.open_clip_backend import OpenClipModel

        return OpenClipModel(spec, plan, random_weights)
    from clipfleet.models.hf_clip_backend import TransformersClipModel

    return TransformersClipModel(spec, plan, random_weights)

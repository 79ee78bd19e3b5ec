"""Pick the CLIP backend named in a spec."""

from __future__ import annotations

from clipfleet.config import ClipModelSpec
from clipfleet.models.base import ClipModel
from clipfleet.models.device import DevicePlan
from clipfleet.models.fingerprint import seeded_init


def weights_identity(spec: ClipModelSpec) -> dict:
    """What names a CLIP's weights (runtime and precision don't change them)."""
    return spec.model_dump(include={"backend", "model", "pretrained", "architecture"})


def load_clip_model(spec: ClipModelSpec, plan: DevicePlan, random_weights: bool) -> ClipModel:
    # Random weights are seeded from the spec: every replica and restart builds the same model.
    with seeded_init(weights_identity(spec), random_weights):
        if spec.backend == "open_clip":
            from clipfleet.models.open_clip_backend import OpenClipModel

            return OpenClipModel(spec, plan, random_weights)
        from clipfleet.models.hf_clip_backend import TransformersClipModel

        return TransformersClipModel(spec, plan, random_weights)

"""What a request is routed by (`Routing`: a sticky key, a pinned variant, a multiplexed model
id) and to (`Profile`: a profile's encoder handles and their labels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipfleet.config import STABLE_VARIANT


@dataclass(frozen=True)
class Routing:
    """How the client asked to be routed: a sticky key and/or an explicitly pinned variant."""

    key: str | None = None
    variant: str | None = None
    model_id: str | None = None  # a multiplexed profile's model (`<profile>:<model-id>`)


@dataclass(frozen=True)
class Profile:
    name: str
    clip: dict[str, Any]  # variant -> DeploymentHandle of its ClipEncoder
    clip_labels: dict[str, str]
    resnet: Any  # DeploymentHandle of the profile's ResNetEncoder
    resnet_label: str

    @property
    def clip_label(self) -> str:
        return self.clip_labels[STABLE_VARIANT]

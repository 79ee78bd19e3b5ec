"""Helpers shared by the seed-compatibility routers (clipfleet/api/compat/seed00N.py).

Every compat route calls the same ClipfleetService as /v1; this module only translates the
seeds' request shapes into ImageSources and profile names, and builds their health figures.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, UploadFile

from clipfleet.api.deps import get_service
from clipfleet.api.encoding import float_rows
from clipfleet.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.results import Embeddings
from clipfleet.ingress.service import ClipfleetService
from clipfleet.observability.resources import system_resources  # noqa: F401 (re-exported)

Service = Annotated[ClipfleetService, Depends(get_service)]

LOCAL_IMAGE_DIR_ENV = "CLIPFLEET_LOCAL_IMAGE_DIR"
HIGH_USAGE_PERCENT = 85.0


@dataclass(frozen=True)
class CompatSettings:
    """Operator settings of the compat routes, read from the environment at request time.

    CLIPFLEET_LOCAL_IMAGE_DIR: a directory whose files seed 001's `image_input` may name by
    path (relative to it, or absolute inside it). Unset (the default): local paths are refused.
    """

    local_image_dir: Path | None = None

    @classmethod
    def from_env(cls) -> CompatSettings:
        folder = os.environ.get(LOCAL_IMAGE_DIR_ENV, "").strip()
        return cls(local_image_dir=Path(folder).resolve() if folder else None)


def profile_for(service: ClipfleetService, preferred: str | None) -> str | None:
    """A seed's closest profile by name when it is configured; else None (the default)."""
    return preferred if preferred in service.profiles else None


def is_url(reference: str) -> bool:
    return "://" in reference


def remote_source(reference: str) -> ImageSource:
    """A URL (the fetcher allows http/https only) or a `data:` URL."""
    if reference.startswith("data:"):
        return ImageSource(base64=reference)
    return ImageSource(url=reference)


def resolve_local_image(reference: str, settings: CompatSettings, param: str) -> Path:
    """The file `reference` names, only if it lies inside the operator's directory."""
    root = settings.local_image_dir
    if root is None:
        raise InvalidRequestError(
            f"local file paths are disabled on this server (set {LOCAL_IMAGE_DIR_ENV}); "
            "send an http(s) URL",
            param,
        )
    candidate = Path(reference)
    if ".." in candidate.parts:
        raise ForbiddenError("'..' is not allowed in a local image path", param)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ForbiddenError("the local image path is outside the allowed directory", param)
    if not resolved.is_file():
        raise NotFoundError("no such local image file", param)
    return resolved


async def image_reference_source(
    service: ClipfleetService, reference: str, param: str
) -> ImageSource:
    """Seed 001's `image_input`: a URL, a `data:` URL, or a path under the allowed directory."""
    if is_url(reference) or reference.startswith("data:"):
        return remote_source(reference)
    path = resolve_local_image(reference, CompatSettings.from_env(), param)
    limit = service.args.fetch.max_bytes
    if path.stat().st_size > limit:
        raise PayloadTooLargeError(f"the image is larger than {limit} bytes", param)
    return ImageSource(data=await asyncio.to_thread(path.read_bytes))


async def upload_source(*uploads: UploadFile | None, names: str = "file") -> ImageSource:
    """The first multipart upload given (seeds name the field differently)."""
    for upload in uploads:
        if upload is not None:
            return ImageSource(data=await upload.read())
    raise InvalidRequestError(f"upload an image as multipart field {names}", names)


def first_vector(result: Embeddings) -> list[float]:
    return float_rows(result)[0]


# -- health figures ---------------------------------------------------------------------------
# system_resources (machine CPU/RAM/GPU) lives in clipfleet.observability.resources, shared
# with the encoders' describe() and /v1/status; re-exported here for the seeds' routes.


@dataclass(frozen=True)
class Snapshot:
    """What the compat health routes report, from one `service.fleet.readiness()` call."""

    ready: bool
    deployments: dict[str, dict]
    random_weights: bool

    def loaded(self, key: str) -> bool:
        return bool(self.deployments.get(key, {}).get("ready"))

    def device(self, key: str) -> str | None:
        return self.deployments.get(key, {}).get("device")

    def warnings(self, resources: dict[str, Any]) -> list[str]:
        warnings = []
        if self.random_weights:
            warnings.append(
                "models run with random weights (CLIPFLEET_RANDOM_WEIGHTS): vectors and scores "
                "are meaningless"
            )
        warnings += [
            f"{key} is not ready"
            for key, entry in self.deployments.items()
            if not entry.get("ready")
        ]
        if resources["memory_percent"] > HIGH_USAGE_PERCENT:
            warnings.append("High memory usage")
        if (resources["gpu_memory_percent"] or 0) > HIGH_USAGE_PERCENT:
            warnings.append("High GPU memory usage")
        return warnings


async def snapshot(service: ClipfleetService) -> Snapshot:
    ready, deployments = await service.fleet.readiness()
    random_weights = any(entry.get("random_weights") for entry in deployments.values())
    return Snapshot(ready=ready, deployments=deployments, random_weights=random_weights)

"""Seed 000, the Flask "Vector Translation API": CLIP and ResNet vectors, and `GET /health`.

Requests are multipart: `image_file` (upload) or `image_url`, plus optional `text` for CLIP.
Responses carry `vector` as the seed's service returned it (a 1 x D nested list, the image
vector), plus `image_vector`, `text_vector` (when `text` is given), `dim` and `model`.
Its CLIP (fashion-clip, a ViT-B/32) maps to the `fast` profile.

`GET /health` is shared with seed 003 (both seeds define it): the body is the union of both
seeds' fields, see `health` below.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse

from clipfleet.api.compat import local_embedder
from clipfleet.api.compat.common import (
    Service,
    first_vector,
    profile_for,
    remote_source,
    snapshot,
    system_resources,
    upload_source,
)
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.service import ClipfleetService

router = APIRouter(tags=["compat: seed 000 (vector translation)"])
PROFILE = "fast"

ImageFile = Annotated[UploadFile | None, File(description="the image as a file upload")]
ImageUrl = Annotated[str | None, Form(description="or the image by http(s) URL")]


async def _source(image_file: UploadFile | None, image_url: str | None) -> ImageSource:
    if image_file is None and image_url:
        return remote_source(image_url)
    return await upload_source(image_file, names="image_file or image_url")


async def _image_body(service: ClipfleetService, source: ImageSource, encoder: str) -> dict:
    result = await service.embed_images([source], encoder, profile_for(service, PROFILE))
    vector = first_vector(result)
    return {
        "vector": [vector],
        "image_vector": vector,
        "dim": result.dim,
        "model": result.target.model,
    }


@router.post("/get_clip_vector")
async def get_clip_vector(
    service: Service,
    image_file: ImageFile = None,
    image_url: ImageUrl = None,
    text: Annotated[str | None, Form(description="optional text to embed too")] = None,
):
    source = await _source(image_file, image_url)
    if not text:
        return await _image_body(service, source, "clip")
    image, texts = await asyncio.gather(
        _image_body(service, source, "clip"),
        service.embed_texts([text], profile_for(service, PROFILE)),
    )
    return {**image, "text_vector": first_vector(texts)}


@router.post("/get_resnet_vector")
async def get_resnet_vector(
    service: Service, image_file: ImageFile = None, image_url: ImageUrl = None
):
    return await _image_body(service, await _source(image_file, image_url), "resnet")


@router.get("/health")
async def health(service: Service) -> JSONResponse:
    """Seed 000's body (status, models, resources, warnings) plus seed 003's (device, model).

    200 with status "healthy" when every deployment answers; 503 "unhealthy" otherwise.
    """
    state = await snapshot(service)
    resources = system_resources()
    profile = service.profile(profile_for(service, PROFILE)).name
    body = {
        "status": "healthy" if state.ready else "unhealthy",
        "models": {
            "clip_model_loaded": state.loaded(f"{profile}.clip"),
            "resnet_model_loaded": state.loaded(f"{profile}.resnet"),
            "device": state.device(f"{profile}.clip"),
        },
        "resources": resources,
        "warnings": state.warnings(resources),
        **local_embedder.health_fields(service, state),
    }
    return JSONResponse(status_code=200 if state.ready else 503, content=body)

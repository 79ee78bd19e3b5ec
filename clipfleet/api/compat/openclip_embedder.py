"""Seed 004, the OpenCLIP embedding service: `POST /embed/text`, `POST /embed/image`.

The seed documents `POST /embed/text {"text": ...}` and `GET /readyz -> {status, model}`
(served by clipfleet.api.routes.health.readyz, which carries `model`). For the image counterpart and
the response body it only says "image embedding"; we follow its service: `POST /embed/image`
with a multipart `file` (or the raw image bytes as the request body), and both routes answer
`{embedding, model_name, model_version}` (open_clip architecture and pretrained tag), plus
`model`, clipfleet's full label. Its model (ViT-B-32/openai) maps to the `fast` profile.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from pydantic import BaseModel, Field

from clipfleet.api.compat.common import Service, first_vector, profile_for
from clipfleet.api.schemas.v1 import HARD_MAX_TEXT
from clipfleet.errors import InvalidRequestError
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.results import Embeddings
from clipfleet.ingress.service import ClipfleetService

router = APIRouter(tags=["compat: seed 004 (OpenCLIP embeddings)"])
PROFILE = "fast"


class TextEmbedRequest(BaseModel):
    text: str = Field(min_length=1, max_length=HARD_MAX_TEXT)


class EmbedResponse(BaseModel):
    embedding: list[float]
    model_name: str
    model_version: str
    model: str


def _answer(service: ClipfleetService, result: Embeddings) -> dict:
    spec = service.args.profiles[result.target.profile.name].clip
    return {
        "embedding": first_vector(result),
        "model_name": spec.model,
        "model_version": spec.pretrained or spec.backend,
        "model": result.target.model,
    }


@router.post("/embed/text", response_model=EmbedResponse)
async def embed_text(body: TextEmbedRequest, service: Service):
    return _answer(service, await service.embed_texts([body.text], profile_for(service, PROFILE)))


@router.post("/embed/image", response_model=EmbedResponse)
async def embed_image(
    request: Request,
    service: Service,
    file: Annotated[UploadFile | None, File(description="or send the bytes as the body")] = None,
):
    if file is not None:
        data = await file.read()
    elif request.headers.get("content-type", "").startswith("multipart/"):
        raise InvalidRequestError("upload the image as multipart field `file`", "file")
    else:
        data = await request.body()
    if not data:
        raise InvalidRequestError("No image data provided", "file")
    source = ImageSource(data=data)
    result = await service.embed_images([source], "clip", profile_for(service, PROFILE))
    return _answer(service, result)

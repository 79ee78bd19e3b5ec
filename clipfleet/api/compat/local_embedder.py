"""Seed 003, the local CLIP embedding server: `POST /embed` and `POST /embed/batch`.

Its contract is HTTP 200 with `{success: false, error}` on any failure (bad JSON, bad fields,
an image that can't be fetched, limits), so these two routes validate their own bodies and
turn clipfleet errors into that shape instead of the v1 envelope. Its `GET /health` is served
by vector_translation.health (the union of both seeds' fields; `health_fields` supplies this
seed's). Its model (clip-vit-large-patch14) maps to the `accurate` profile.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError

from clipfleet.api.compat.common import (
    Service,
    Snapshot,
    first_vector,
    profile_for,
    remote_source,
)
from clipfleet.api.encoding import float_rows
from clipfleet.api.schemas.v1 import HARD_MAX_ITEMS
from clipfleet.errors import UpstreamError, UpstreamTimeoutError, find_clipfleet_error
from clipfleet.ingress.results import Embeddings
from clipfleet.ingress.service import ClipfleetService

router = APIRouter(tags=["compat: seed 003 (local CLIP server)"])
PROFILE = "accurate"


class EmbeddingRequest(BaseModel):
    input: str = Field(min_length=1, description="the text, or the image's http(s) URL")
    type: Literal["text", "image"]


class BatchEmbeddingRequest(BaseModel):
    inputs: list[str] = Field(min_length=1, max_length=HARD_MAX_ITEMS)
    type: Literal["text", "image"]


class EmbeddingResponse(BaseModel):
    success: bool
    embedding: list[float] | None = None
    error: str | None = None


class BatchEmbeddingResponse(BaseModel):
    success: bool
    embeddings: list[list[float]] | None = None
    error: str | None = None


def _documented_body(model: type[BaseModel]) -> dict:
    """The JSON body in the OpenAPI docs (the handler parses it itself, see module doc)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def health_fields(service: ClipfleetService, state: Snapshot) -> dict:
    profile = service.profile(profile_for(service, PROFILE))
    return {"device": state.device(f"{profile.name}.clip"), "model": profile.clip_label}


async def _embed(service: ClipfleetService, inputs: list[str], kind: str) -> Embeddings:
    profile = profile_for(service, PROFILE)
    if kind == "text":
        return await service.embed_texts(inputs, profile)
    return await service.embed_images([remote_source(ref) for ref in inputs], "clip", profile)


def _failure(exc: Exception, what: str) -> dict:
    """The seed's failure body, or re-raise what is not a request or clipfleet error."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return {"success": False, "error": f"invalid request: {where} {first['msg']}".strip()}
    error = find_clipfleet_error(exc)
    if error is None:
        raise exc
    if isinstance(error, UpstreamError | UpstreamTimeoutError):
        what = "Failed to download image"
    where = f" ({error.param})" if error.param else ""
    return {"success": False, "error": f"{what}: {error.message}{where}"}


@router.post(
    "/embed", response_model=EmbeddingResponse, openapi_extra=_documented_body(EmbeddingRequest)
)
async def embed(request: Request, service: Service):
    try:
        body = EmbeddingRequest.model_validate_json(await request.body())
        result = await _embed(service, [body.input], body.type)
    except Exception as exc:
        return _failure(exc, "Embedding generation failed")
    return {"success": True, "embedding": first_vector(result)}


@router.post(
    "/embed/batch",
    response_model=BatchEmbeddingResponse,
    openapi_extra=_documented_body(BatchEmbeddingRequest),
)
async def embed_batch(request: Request, service: Service):
    try:
        body = BatchEmbeddingRequest.model_validate_json(await request.body())
        result = await _embed(service, body.inputs, body.type)
    except Exception as exc:
        return _failure(exc, "Batch embedding generation failed")
    return {"success": True, "embeddings": float_rows(result)}

"""The v1 JSON API and its multipart upload variants."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Response, UploadFile

from clipfleet.api.model_select import ModelHeader, select
from clipfleet.api.routes.common import ERRORS, Route, Service, served_headers
from clipfleet.api.routes.rerank import vllm_score
from clipfleet.api.schemas.rerank import ScoreBody, VllmScoreRequest, VllmScoreResponse
from clipfleet.api.schemas.v1 import (
    EmbeddingResponse,
    EmbedImageRequest,
    EmbedTextRequest,
    Encoder,
    ImageRef,
    Labels,
    ProfileName,
    PromptTemplate,
    ScoreResponse,
    TagRequest,
    TagResponse,
    Text,
    Threshold,
    TopK,
)
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.service import ClipfleetService
from clipfleet.models.quantize import encode_all
from clipfleet.models.vectors import truncate

router = APIRouter(prefix="/v1", tags=["v1"], responses=ERRORS)


def source_of(ref: ImageRef) -> ImageSource:
    return ImageSource(url=ref.url, base64=ref.base64)


async def source_of_upload(upload: UploadFile) -> ImageSource:
    return ImageSource(data=await upload.read())


async def shaped(
    service: ClipfleetService, body: dict, dimensions: int | None = None, encoding: str = "float"
) -> dict:
    """The service's vectors truncated to `dimensions` and in `encoding`
    (clipfleet.models.quantize), with the space they live in."""
    space = await service.vector_space(body["profile"], body["variant"], body["encoder"])
    matrix = truncate(np.asarray(body["embeddings"], dtype=np.float32), dimensions)
    rows = encode_all(matrix, [encoding], space.int8_limit, space.dim)[encoding]
    dim = int(matrix.shape[1])
    return {**body, "embeddings": rows, "dim": dim, "embedding_space": space.embedding_space}


@router.post("/embed/image", response_model=EmbeddingResponse)
async def embed_image(
    body: EmbedImageRequest,
    service: Service,
    response: Response,
    routing: Route,
    model: ModelHeader,
):
    sources = [source_of(ref) for ref in body.images]
    target = select(body.profile, body.model, model, routing)
    result = await service.embed_images(sources, body.encoder, *target)
    return served_headers(
        response, await shaped(service, result, body.dimensions, body.encoding_format)
    )


@router.post("/embed/text", response_model=EmbeddingResponse)
async def embed_text(
    body: EmbedTextRequest, service: Service, response: Response, routing: Route, model: ModelHeader
):
    target = select(body.profile, body.model, model, routing)
    result = await service.embed_texts(body.texts, *target)
    return served_headers(
        response, await shaped(service, result, body.dimensions, body.encoding_format)
    )


@router.post("/score", response_model=ScoreResponse | VllmScoreResponse)
async def score(
    body: ScoreBody, service: Service, response: Response, routing: Route, model: ModelHeader
):
    """clipfleet's `pairs` body, or vLLM's score body (`text_1`/`text_2`, ...: /score)."""
    if isinstance(body, VllmScoreRequest):
        return await vllm_score(body, service, response, routing)
    pairs = [(source_of(pair.image), pair.text) for pair in body.pairs]
    target = select(body.profile, body.model, model, routing)
    return served_headers(response, await service.score(pairs, *target))


@router.post("/tag", response_model=TagResponse)
async def tag(
    body: TagRequest, service: Service, response: Response, routing: Route, model: ModelHeader
):
    profile, routing = select(body.profile, body.model, model, routing)
    result = await service.tag(
        source_of(body.image),
        body.labels,
        body.top_k,
        body.prompt_template,
        profile,
        routing,
        threshold=body.threshold,
    )
    return served_headers(response, result)


@router.post("/embed/image/upload", response_model=EmbeddingResponse)
async def embed_image_upload(
    service: Service,
    response: Response,
    image: Annotated[list[UploadFile], File(description="one or more image files")],
    routing: Route,
    model: ModelHeader,
    encoder: Annotated[Encoder, Form()] = "clip",
    profile: Annotated[ProfileName | None, Form()] = None,
):
    sources = [await source_of_upload(upload) for upload in image]
    target = select(profile, None, model, routing)
    return served_headers(
        response, await shaped(service, await service.embed_images(sources, encoder, *target))
    )


@router.post("/score/upload", response_model=ScoreResponse)
async def score_upload(
    service: Service,
    response: Response,
    image: Annotated[UploadFile, File()],
    text: Annotated[Text, Form()],
    routing: Route,
    model: ModelHeader,
    profile: Annotated[ProfileName | None, Form()] = None,
):
    pairs = [(await source_of_upload(image), text)]
    return served_headers(
        response, await service.score(pairs, *select(profile, None, model, routing))
    )


@router.post("/tag/upload", response_model=TagResponse)
async def tag_upload(
    service: Service,
    response: Response,
    image: Annotated[UploadFile, File()],
    routing: Route,
    model: ModelHeader,
    labels: Annotated[Labels | None, Form(description="repeat the field per label")] = None,
    top_k: Annotated[TopK, Form()] = 5,
    prompt_template: Annotated[PromptTemplate | None, Form()] = None,
    profile: Annotated[ProfileName | None, Form()] = None,
    threshold: Annotated[Threshold | None, Form()] = None,
):
    profile, routing = select(profile, None, model, routing)
    result = await service.tag(
        await source_of_upload(image),
        labels,
        top_k,
        prompt_template,
        profile,
        routing,
        threshold=threshold,
    )
    return served_headers(response, result)

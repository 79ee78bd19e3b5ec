"""The v1 JSON API and its multipart upload variants."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from clipfleet.api.encoding import served_fields, wire_vectors
from clipfleet.api.routes.common import ERRORS, ModelHeader, Route, Service, resolved
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
from clipfleet.ingress.results import Embeddings, Scores, Tags
from clipfleet.ingress.service import ClipfleetService

router = APIRouter(prefix="/v1", tags=["v1"], responses=ERRORS)


def source_of(ref: ImageRef) -> ImageSource:
    return ImageSource(url=ref.url, base64=ref.base64)


async def source_of_upload(upload: UploadFile) -> ImageSource:
    return ImageSource(data=await upload.read())


async def embedding_body(
    service: ClipfleetService,
    result: Embeddings,
    dimensions: int | None = None,
    encoding: str = "float",
) -> dict:
    """The v1 embedding body: the result's vectors truncated to `dimensions` and in `encoding`
    (clipfleet.models.quantize), with the space they live in."""
    space = await service.vector_space(result.target)
    rows, dim = wire_vectors(result, [encoding], dimensions, space)
    return {
        **served_fields(result.target),
        "embeddings": rows[encoding],
        "dim": dim,
        "encoder": result.target.encoder,
        "embedding_space": space.embedding_space,
    }


def scores_body(result: Scores) -> dict:
    return {
        **served_fields(result.target),
        "results": result.results,
        "activation": result.activation,
    }


def tags_body(result: Tags) -> dict:
    return {**served_fields(result.target), "tags": result.tags, "activation": result.activation}


@router.post("/embed/image", response_model=EmbeddingResponse)
async def embed_image(
    body: EmbedImageRequest, service: Service, request: Request, routing: Route, model: ModelHeader
):
    sources = [source_of(ref) for ref in body.images]
    asked = service.targets.requested(body.profile, body.model, model, routing)
    target = resolved(request, service, asked, body.encoder)
    result = await service.embed_images(sources, body.encoder, None, target)
    return await embedding_body(service, result, body.dimensions, body.encoding_format)


@router.post("/embed/text", response_model=EmbeddingResponse)
async def embed_text(
    body: EmbedTextRequest, service: Service, request: Request, routing: Route, model: ModelHeader
):
    asked = service.targets.requested(body.profile, body.model, model, routing)
    result = await service.embed_texts(body.texts, None, resolved(request, service, asked))
    return await embedding_body(service, result, body.dimensions, body.encoding_format)


@router.post("/score", response_model=ScoreResponse | VllmScoreResponse)
async def score(
    body: ScoreBody, service: Service, request: Request, routing: Route, model: ModelHeader
):
    """clipfleet's `pairs` body, or vLLM's score body (`text_1`/`text_2`, ...: /score)."""
    if isinstance(body, VllmScoreRequest):
        return await vllm_score(body, service, request, routing)
    pairs = [(source_of(pair.image), pair.text) for pair in body.pairs]
    asked = service.targets.requested(body.profile, body.model, model, routing)
    return scores_body(await service.score(pairs, None, resolved(request, service, asked)))


@router.post("/tag", response_model=TagResponse)
async def tag(
    body: TagRequest, service: Service, request: Request, routing: Route, model: ModelHeader
):
    asked = service.targets.requested(body.profile, body.model, model, routing)
    result = await service.tag(
        source_of(body.image),
        body.labels,
        body.top_k,
        body.prompt_template,
        None,
        resolved(request, service, asked),
        threshold=body.threshold,
    )
    return tags_body(result)


@router.post("/embed/image/upload", response_model=EmbeddingResponse)
async def embed_image_upload(
    service: Service,
    request: Request,
    image: Annotated[list[UploadFile], File(description="one or more image files")],
    routing: Route,
    model: ModelHeader,
    encoder: Annotated[Encoder, Form()] = "clip",
    profile: Annotated[ProfileName | None, Form()] = None,
):
    sources = [await source_of_upload(upload) for upload in image]
    asked = service.targets.requested(profile, None, model, routing)
    target = resolved(request, service, asked, encoder)
    return await embedding_body(service, await service.embed_images(sources, encoder, None, target))


@router.post("/score/upload", response_model=ScoreResponse)
async def score_upload(
    service: Service,
    request: Request,
    image: Annotated[UploadFile, File()],
    text: Annotated[Text, Form()],
    routing: Route,
    model: ModelHeader,
    profile: Annotated[ProfileName | None, Form()] = None,
):
    pairs = [(await source_of_upload(image), text)]
    asked = service.targets.requested(profile, None, model, routing)
    return scores_body(await service.score(pairs, None, resolved(request, service, asked)))


@router.post("/tag/upload", response_model=TagResponse)
async def tag_upload(
    service: Service,
    request: Request,
    image: Annotated[UploadFile, File()],
    routing: Route,
    model: ModelHeader,
    labels: Annotated[Labels | None, Form(description="repeat the field per label")] = None,
    top_k: Annotated[TopK, Form()] = 5,
    prompt_template: Annotated[PromptTemplate | None, Form()] = None,
    profile: Annotated[ProfileName | None, Form()] = None,
    threshold: Annotated[Threshold | None, Form()] = None,
):
    asked = service.targets.requested(profile, None, model, routing)
    result = await service.tag(
        await source_of_upload(image),
        labels,
        top_k,
        prompt_template,
        None,
        resolved(request, service, asked),
        threshold=threshold,
    )
    return tags_body(result)

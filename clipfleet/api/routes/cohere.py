"""Cohere's `POST /v2/embed`: texts, images (data URLs) or `inputs` of content parts, every
`embedding_types` value per request, `output_dimension`. The same service operation and vectors
as /v1/embeddings and /v1/embed/*; compressed types from clipfleet.models.quantize."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from clipfleet.api.encoding import wire_vectors
from clipfleet.api.routes.common import ERRORS, Route, Service, resolved
from clipfleet.api.schemas.cohere import CohereEmbedRequest, CohereEmbedResponse
from clipfleet.api.schemas.content_parts import image_source, parts_item
from clipfleet.api.schemas.v1 import ErrorResponse
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.service_mixed import MixedItem

router = APIRouter(tags=["cohere"], responses={**ERRORS, 404: {"model": ErrorResponse}})


def cohere_items(
    service: ClipfleetService, body: CohereEmbedRequest
) -> tuple[list[MixedItem], str]:
    """One item per vector, after the item count is checked."""
    field = "texts" if body.texts else "images" if body.images else "inputs"
    given = body.texts or body.images or body.inputs
    service.check_count(len(given), field)
    if body.texts:
        return [MixedItem(f"texts[{i}]", text=text) for i, text in enumerate(body.texts)], field
    if body.images:
        return [
            MixedItem(f"images[{i}]", image=image_source(image, f"images[{i}]"))
            for i, image in enumerate(body.images)
        ], field
    return [parts_item(one.content, f"inputs[{i}]") for i, one in enumerate(body.inputs)], field


@router.post("/v2/embed", response_model=CohereEmbedResponse)
async def embed(body: CohereEmbedRequest, service: Service, request: Request, routing: Route):
    asked = service.targets.named(body.model, routing)
    items, field = cohere_items(service, body)
    target = resolved(request, service, asked)
    result = await service.embed_items(items, None, target, field, count_tokens=True)
    space = result.space
    dimensions, kinds = body.output_dimension, body.embedding_types
    rows, _ = wire_vectors(result, kinds, dimensions, space, "output_dimension")
    return {
        "id": str(uuid.uuid4()),
        "embeddings": rows,
        "texts": [item.text for item in items if item.text is not None],
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {
                "input_tokens": sum(result.token_counts),
                "images": sum(item.image is not None for item in items),
            },
        },
        "model": target.served_id,
        "embedding_space": space.embedding_space,
    }

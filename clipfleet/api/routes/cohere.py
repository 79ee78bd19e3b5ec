"""Cohere's `POST /v2/embed`: texts, images (data URLs) or `inputs` of content parts, every
`embedding_types` value per request, `output_dimension`. The same service operation and vectors
as /v1/embeddings and /v1/embed/*; compressed types from clipfleet.models.quantize."""

from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter, Response

from clipfleet.api.routes.common import ERRORS, Route, Service, served_headers
from clipfleet.api.routes.openai import pinned, served_id
from clipfleet.api.schemas.cohere import CohereEmbedRequest, CohereEmbedResponse
from clipfleet.api.schemas.content_parts import image_source, parts_item
from clipfleet.api.schemas.v1 import ErrorResponse
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.service_mixed import Item
from clipfleet.models.quantize import encode_all
from clipfleet.models.vectors import truncate

router = APIRouter(tags=["cohere"], responses={**ERRORS, 404: {"model": ErrorResponse}})


def cohere_items(service: ClipfleetService, body: CohereEmbedRequest) -> tuple[list[Item], str]:
    """One item per vector, after the item count is checked."""
    field = "texts" if body.texts else "images" if body.images else "inputs"
    given = body.texts or body.images or body.inputs
    service.check_count(len(given), field)
    if body.texts:
        return [Item(f"texts[{i}]", text=text) for i, text in enumerate(body.texts)], field
    if body.images:
        return [
            Item(f"images[{i}]", image=image_source(image, f"images[{i}]"))
            for i, image in enumerate(body.images)
        ], field
    return [parts_item(one.content, f"inputs[{i}]") for i, one in enumerate(body.inputs)], field


@router.post("/v2/embed", response_model=CohereEmbedResponse)
async def embed(body: CohereEmbedRequest, service: Service, response: Response, routing: Route):
    profile, routing = pinned(service, body.model, routing)
    items, field = cohere_items(service, body)
    result = await service.embed_items(items, profile, routing, field, count_tokens=True)
    served_headers(response, result)
    space = result["space"]
    matrix = np.stack(result["embeddings"]).astype(np.float32, copy=False)
    matrix = truncate(matrix, body.output_dimension, "output_dimension")
    return {
        "id": str(uuid.uuid4()),
        "embeddings": encode_all(matrix, body.embedding_types, space.int8_limit, space.dim),
        "texts": [item.text for item in items if item.text is not None],
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {
                "input_tokens": sum(result["token_counts"]),
                "images": sum(item.image is not None for item in items),
            },
        },
        "model": served_id(service, result),
        "embedding_space": space.embedding_space,
    }

"""OpenAI-compatible routes: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}`.

Embeddings go through the service's `embed_items` (one variant per request; the same encoder
calls as /v1/embed/text and /v1/embed/image, encoder `clip`), so the vectors are the same; only
the request and response shapes differ: strings, content parts, vLLM's `messages`
(clipfleet.api.schemas.content_parts). `model` is the one grammar of clipfleet.modelref; an unknown
one is a 404 with `code: model_not_found` (`service.targets.named`, as on the other peers'
routes).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from clipfleet.api.encoding import wire_vectors
from clipfleet.api.routes.common import ERRORS, Route, Service, resolved
from clipfleet.api.schemas.content_parts import TextPart, part_item, parts_item, string_item
from clipfleet.api.schemas.openai import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelDetail,
    ModelList,
)
from clipfleet.api.schemas.v1 import ErrorResponse
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.service_mixed import MixedItem
from clipfleet.ingress.targets import Routing
from clipfleet.modelref import ModelRef
from clipfleet.models.embedding_space import embedding_space

router = APIRouter(
    prefix="/v1", tags=["openai"], responses={**ERRORS, 404: {"model": ErrorResponse}}
)
OWNED_BY = "clipfleet"
CREATED = int(time.time())  # when this ingress started serving its models


def model_ids(service: ClipfleetService) -> list[str]:
    """Every servable id: each profile (traffic split decides) and each profile/variant."""
    ids = []
    for name, profile in service.profiles.items():
        ids += [name, *(f"{name}/{variant}" for variant in profile.clip)]
    return ids


def embedding_items(body: EmbeddingsRequest) -> tuple[list[MixedItem], str]:
    """The request's texts and images, one item per vector, and the field they came from."""
    if body.messages is not None:
        parts = []
        for message in body.messages:
            content = message.content
            parts += [TextPart(type="text", text=content)] if isinstance(content, str) else content
        return [parts_item(parts, "messages")], "messages"
    inputs = [body.input] if isinstance(body.input, str) else body.input
    items = [
        string_item(item, body.modality, f"input[{index}]")
        if isinstance(item, str)
        else part_item(item, f"input[{index}]")
        for index, item in enumerate(inputs)
    ]
    return items, "input"


@router.post("/embeddings", response_model=EmbeddingsResponse)
async def embeddings(body: EmbeddingsRequest, service: Service, request: Request, routing: Route):
    asked = service.targets.named(body.model, routing)
    if isinstance(body.input, list):
        service.check_count(len(body.input), "input")  # before any item is looked at
    items, field = embedding_items(body)
    target = resolved(request, service, asked)
    result = await service.embed_items(items, None, target, field, count_tokens=True)
    rows = wire_vectors(result, [body.encoding_format], body.dimensions)[0][body.encoding_format]
    tokens = sum(result.token_counts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": row}
            for index, row in enumerate(rows)
        ],
        "model": target.served_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "embedding_space": result.space.embedding_space,
    }


def _card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": OWNED_BY}


@router.get("/models", response_model=ModelList)
async def list_models(service: Service):
    """OpenAI's model list: one entry per profile and per profile/variant."""
    return {"object": "list", "data": [_card(model_id) for model_id in model_ids(service)]}


@router.get("/models/{model_id:path}", response_model=ModelDetail)
async def retrieve_model(model_id: str, service: Service):
    """Everything about one id; the whole fleet's document is in GET /v1/status."""
    ref = service.targets.model_ref(model_id, param=None)
    document = await service.fleet.models()
    if ref.model_id is not None:  # one model of a multiplexed profile
        service.targets.resolve(ref.profile, Routing(model_id=ref.model_id))  # 403/404: bad id
        pool = document.get("multiplexed", {}).get(ref.profile, {})
        return {
            **_card(str(ref)),
            "profile": ref.profile,
            "variant": None,
            "multiplexed": pool,
            "embedding_space": resident_space(service, ref, pool),
        }
    entry = document["profiles"][ref.profile]
    clip = entry["clip"] if ref.variant is None else {ref.variant: entry["clip"][ref.variant]}
    for variant, detail in clip.items():
        target = service.targets.resolve(ref.profile, Routing(variant=variant))
        detail.update((await service.vector_space(target)).card())
    resnet = entry["resnet"]
    target = service.targets.resolve(ref.profile, None, "resnet")
    resnet.update((await service.vector_space(target)).card())
    return {
        **_card(str(ref)),
        "profile": ref.profile,
        "variant": ref.variant,
        "default": ref.profile == document["default_profile"],
        "clip": clip,
        "resnet": resnet,
    }


def resident_space(service: ClipfleetService, ref: ModelRef, pool: dict) -> str | None:
    """A multiplexed model's space when the replica that answered holds it (a model card
    never loads a model)."""
    for model in pool.get("replica", {}).get("resident", []):
        if model.get("id") == ref.model_id and "model_space" in model:
            return embedding_space(model["model_space"], service.args.fetch)
    return None

"""OpenAI-compatible routes: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}`.

Embeddings go through the service's `embed_items` (one variant per request; the same encoder
calls as /v1/embed/text and /v1/embed/image, encoder `clip`), so the vectors are the same; only
the request and response shapes differ: strings, content parts, vLLM's `messages`
(clipfleet.api.schemas.content_parts). `model` is the one grammar of clipfleet.modelref; an unknown
one is a 404 with `code: model_not_found`. `pinned` and `served_id` serve the other peers' routes
too.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from clipfleet.api.routes.common import ERRORS, Route, Service, served_headers
from clipfleet.api.schemas.content_parts import TextPart, part_item, parts_item, string_item
from clipfleet.api.schemas.openai import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelDetail,
    ModelList,
)
from clipfleet.api.schemas.v1 import ErrorResponse
from clipfleet.errors import ModelNotFoundError
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.service_mixed import Item
from clipfleet.ingress.targets import Routing
from clipfleet.modelref import ModelRef, parse_model_ref
from clipfleet.models.embedding_space import embedding_space
from clipfleet.models.vectors import shape_embeddings

router = APIRouter(
    prefix="/v1", tags=["openai"], responses={**ERRORS, 404: {"model": ErrorResponse}}
)
OWNED_BY = "clipfleet"
CREATED = int(time.time())  # when this ingress started serving its models


def model_ref(service: ClipfleetService, text: str, param: str | None = "model") -> ModelRef:
    """`text` parsed and checked against the served profiles and variants (404 if unknown)."""
    try:
        ref = parse_model_ref(text)
    except ValueError as exc:
        raise ModelNotFoundError(str(exc), param) from None
    if ref.profile in service.multiplexed:
        if ref.model_id is None:
            raise ModelNotFoundError(
                f"model {text!r}: profile {ref.profile!r} serves many models; name one as "
                f"{ref.profile}:<model-id>",
                param,
            )
        return ref  # the service checks the id against the profile's allow-list
    profile = service.profiles.get(ref.profile)
    if profile is None:
        raise ModelNotFoundError(
            f"model {text!r} does not exist; GET /v1/models lists the served ones "
            f"(profiles: {', '.join(sorted([*service.profiles, *service.multiplexed.handles]))})",
            param,
        )
    if ref.model_id is not None:
        raise ModelNotFoundError(
            f"model {text!r} does not exist: profile {ref.profile!r} serves no multiplexed "
            "models; use <profile> or <profile>/<variant>",
            param,
        )
    if ref.variant is not None and ref.variant not in profile.clip:
        raise ModelNotFoundError(
            f"model {text!r} does not exist: profile {ref.profile!r} has variants "
            f"{', '.join(sorted(profile.clip))}",
            param,
        )
    return ref


def pinned(
    service: ClipfleetService, model: str | None, routing: Routing
) -> tuple[str | None, Routing]:
    """The profile and routing a body's `model` names (a variant or model id pins it, like the
    X-Clipfleet-Variant / -Model headers); no model: the default profile."""
    if model is None:
        return None, routing
    ref = model_ref(service, model)
    if ref.variant is not None or ref.model_id is not None:
        routing = Routing(key=routing.key, variant=ref.variant, model_id=ref.model_id)
    return ref.profile, routing


def served_id(service: ClipfleetService, result: dict) -> str:
    """The model id that served `result`: `<profile>/<variant>` or `<profile>:<model-id>`."""
    separator = ":" if result["profile"] in service.multiplexed else "/"
    return f"{result['profile']}{separator}{result['variant']}"


def model_ids(service: ClipfleetService) -> list[str]:
    """Every servable id: each profile (traffic split decides) and each profile/variant."""
    ids = []
    for name, profile in service.profiles.items():
        ids += [name, *(f"{name}/{variant}" for variant in profile.clip)]
    return ids


def embedding_items(body: EmbeddingsRequest) -> tuple[list[Item], str]:
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
async def embeddings(body: EmbeddingsRequest, service: Service, response: Response, routing: Route):
    profile, routing = pinned(service, body.model, routing)
    if isinstance(body.input, list):
        service.check_count(len(body.input), "input")  # before any item is looked at
    items, field = embedding_items(body)
    result = await service.embed_items(items, profile, routing, field, count_tokens=True)
    served_headers(response, result)
    rows, _ = shape_embeddings(result["embeddings"], body.dimensions, body.encoding_format)
    tokens = sum(result["token_counts"])
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": row}
            for index, row in enumerate(rows)
        ],
        "model": served_id(service, result),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "embedding_space": result["space"].embedding_space,
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
    ref = model_ref(service, model_id, param=None)
    document = await service.fleet.models()
    if ref.model_id is not None:  # one model of a multiplexed profile
        service.route(ref.profile, Routing(model_id=ref.model_id))  # 403/404 for a bad id
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
        detail.update((await service.vector_space(ref.profile, variant)).card())
    resnet = entry["resnet"]
    resnet.update((await service.vector_space(ref.profile, "stable", "resnet")).card())
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

"""Rerank and pair scores in the peers' shapes, with images on either side.

`POST /v1/rerank`, `/v2/rerank` (Cohere, Jina; the LangChain / LlamaIndex / Haystack rerankers)
and `/rerank` (vLLM's path), and vLLM's `POST /score` (also accepted on `/v1/score`, whose
`pairs` body stays clipfleet's). Every query and document is embedded once, on one variant
(texts in one encoder call, images through the fetcher), and each pair's `relevance_score` is the
model's own score (clipfleet.scoring.relevance_scores: CLIP's cosine, SigLIP's sigmoid with its
bias), so results order as /v1/score's cosines do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from clipfleet.api.routes.common import ERRORS, Route, Service, resolved
from clipfleet.api.schemas.content_parts import (
    ImagePart,
    Modality,
    TextPart,
    image_source,
    part_item,
    parts_item,
    string_item,
)
from clipfleet.api.schemas.rerank import (
    ImageDocument,
    MultiModal,
    RerankRequest,
    RerankResponse,
    VllmScoreRequest,
    VllmScoreResponse,
)
from clipfleet.api.schemas.v1 import ErrorResponse
from clipfleet.errors import InvalidRequestError
from clipfleet.ingress.service import ClipfleetService
from clipfleet.ingress.service_mixed import MixedItem
from clipfleet.ingress.targets import Routing

router = APIRouter(tags=["rerank"], responses={**ERRORS, 404: {"model": ErrorResponse}})


def fields_text(fields: dict[str, str], rank_fields: Sequence[str] | None, param: str) -> str:
    """An object document's text: its `text`, or with `rank_fields` those fields as
    `name: value` lines (Cohere v1)."""
    if not rank_fields:
        if "text" not in fields:
            raise InvalidRequestError(
                "an object document needs `text` (or `image`; other fields with rank_fields)",
                param,
                status=422,
            )
        return fields["text"]
    lines = [f"{name}: {fields[name]}" for name in rank_fields if name in fields]
    if not lines:
        raise InvalidRequestError(
            f"none of rank_fields {list(rank_fields)} is here", param, status=422
        )
    return "\n".join(lines)


def rerank_item(
    value: Any, param: str, modality: Modality, rank_fields=None, counted: bool = True
) -> tuple[MixedItem, dict]:
    """A query or document as an item, and its echo for `return_documents`."""
    if isinstance(value, str):
        item = string_item(value, modality, param, counted)
        return item, ({"text": value} if item.text is not None else {"image": value})
    if isinstance(value, TextPart | ImagePart):
        item = part_item(value, param, counted)
        echo = (
            {"text": value.text} if isinstance(value, TextPart) else {"image": value.image_url.url}
        )
        return item, echo
    if isinstance(value, MultiModal):
        return parts_item(value.content, param, counted), {}
    if isinstance(value, ImageDocument):
        return MixedItem(param, image=image_source(value.image, param), counted=counted), {
            "image": value.image
        }
    return MixedItem(param, text=fields_text(value, rank_fields, param), counted=counted), dict(
        value
    )


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True)
@router.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True)
async def rerank(body: RerankRequest, service: Service, request: Request, routing: Route):
    asked = service.targets.named(body.model, routing)
    documents = body.documents.content if isinstance(body.documents, MultiModal) else body.documents
    service.check_count(len(documents), "documents")  # before any document is looked at
    query, _ = rerank_item(body.query, "query", body.modality, counted=False)
    found = [
        rerank_item(document, f"documents[{index}]", body.modality, body.rank_fields)
        for index, document in enumerate(documents)
    ]
    pairs = [(0, index) for index in range(len(found))]
    items = [item for item, _ in found]
    target = resolved(request, service, asked)
    result = await service.relevance([query], items, pairs, None, target, "documents")
    scores = result.scores
    order = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
    results = []
    for index in order[: body.top_n or len(order)]:
        entry: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if body.return_documents:
            entry["document"] = found[index][1]
        results.append(entry)
    return {
        "id": str(uuid.uuid4()),
        "model": target.served_id,
        "results": results,
        "usage": {"total_tokens": sum(result.token_counts)},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        "activation": result.activation,
        "embedding_space": result.space.embedding_space,
    }


def side_items(value: Any, name: str, modality: Modality, counted: bool) -> list[MixedItem]:
    if isinstance(value, str):
        return [string_item(value, modality, name, counted)]
    if isinstance(value, MultiModal):
        return [
            part_item(part, f"{name}.content[{index}]", counted)
            for index, part in enumerate(value.content)
        ]
    return [
        string_item(text, modality, f"{name}[{index}]", counted) for index, text in enumerate(value)
    ]


def side_length(value: Any) -> int:
    return (
        1
        if isinstance(value, str)
        else len(value.content if isinstance(value, MultiModal) else value)
    )


async def vllm_score(
    body: VllmScoreRequest, service: ClipfleetService, request: Request, routing: Routing
) -> dict:
    """vLLM's score: one first item against every second (1:N), or pair by pair (N:N)."""
    asked = service.targets.named(body.model, routing)
    (first_name, first), (second_name, second) = body.sides()
    service.check_count(side_length(second), second_name)
    left = side_items(first, first_name, body.modality, counted=False)
    right = side_items(second, second_name, body.modality, counted=True)
    if len(left) == 1:
        pairs = [(0, index) for index in range(len(right))]
    elif len(left) == len(right):
        pairs = [(index, index) for index in range(len(right))]
    else:
        raise InvalidRequestError(
            f"{first_name} has {len(left)} items and {second_name} {len(right)}: give one "
            f"{first_name} (scored against each {second_name}) or as many as {second_name}",
            first_name,
            status=422,
        )
    target = resolved(request, service, asked)
    result = await service.relevance(left, right, pairs, None, target, second_name)
    tokens = sum(result.token_counts)
    return {
        "id": f"score-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": target.served_id,
        "data": [
            {"index": index, "object": "score", "score": score}
            for index, score in enumerate(result.scores)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "activation": result.activation,
        "embedding_space": result.space.embedding_space,
    }


@router.post("/score", response_model=VllmScoreResponse)
async def score(body: VllmScoreRequest, service: Service, request: Request, routing: Route):
    return await vllm_score(body, service, request, routing)

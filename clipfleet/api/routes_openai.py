"""OpenAI-compatible routes: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}`.

Embeddings go through the same service calls as /v1/embed/text and /v1/embed/image (encoder
`clip`), so the vectors are the same; only the request and response shapes differ. `model` is
the one grammar of clipfleet.modelref; an unknown one is a 404 with `code: model_not_found`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from clipfleet.api.deps import get_service
from clipfleet.api.openai_schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelDetail,
    ModelList,
)
from clipfleet.api.routes_v1 import ERRORS, PROFILE_HEADER, VARIANT_HEADER, Route
from clipfleet.api.schemas import ErrorResponse
from clipfleet.errors import ClipfleetError, InvalidRequestError, ModelNotFoundError
from clipfleet.fetch import ImageSource
from clipfleet.modelref import ModelRef, parse_model_ref
from clipfleet.service import ClipfleetService, Routing
from clipfleet.vectors import shape_embeddings

router = APIRouter(
    prefix="/v1", tags=["openai"], responses={**ERRORS, 404: {"model": ErrorResponse}}
)
Service = Annotated[ClipfleetService, Depends(get_service)]
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


def model_ids(service: ClipfleetService) -> list[str]:
    """Every servable id: each profile (traffic split decides) and each profile/variant."""
    ids = []
    for name, profile in service.profiles.items():
        ids += [name, *(f"{name}/{variant}" for variant in profile.clip)]
    return ids


def image_source(item: str, index: int) -> ImageSource:
    if item.startswith(("http://", "https://")):
        return ImageSource(url=item)
    if item.startswith("data:"):
        return ImageSource(base64=item)
    raise InvalidRequestError(
        "with modality=image each input is an http(s) URL or a data: URL",
        f"input[{index}]",
        status=422,
    )


@contextlib.contextmanager
def params_named_input() -> Iterator[None]:
    """The service names its fields `texts[i]` / `images[i]`; here the field is `input[i]`."""
    try:
        yield
    except ClipfleetError as exc:
        if not (exc.param or "").startswith(("texts", "images")):
            raise
        index = exc.param.removeprefix("texts").removeprefix("images")
        renamed = exc.at_param(f"input{index}")
        if hasattr(exc, "clipfleet_served"):
            renamed.clipfleet_served = exc.clipfleet_served
        raise renamed from exc


@router.post("/embeddings", response_model=EmbeddingsResponse)
async def embeddings(body: EmbeddingsRequest, service: Service, response: Response, routing: Route):
    ref = model_ref(service, body.model)
    if ref.variant is not None or ref.model_id is not None:  # like X-Clipfleet-Variant / -Model
        routing = Routing(key=routing.key, variant=ref.variant, model_id=ref.model_id)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    with params_named_input():
        if body.modality == "image":
            service.check_count(len(inputs), "images")
            sources = [image_source(item, index) for index, item in enumerate(inputs)]
            result = await service.embed_images(sources, "clip", ref.profile, routing)
            token_counts = [0] * len(inputs)
        else:
            result = await service.embed_texts(inputs, ref.profile, routing, count_tokens=True)
            token_counts = result["token_counts"]
    response.headers[PROFILE_HEADER] = result["profile"]
    response.headers[VARIANT_HEADER] = result["variant"]
    rows, _ = shape_embeddings(result["embeddings"], body.dimensions, body.encoding_format)
    tokens = sum(token_counts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": row}
            for index, row in enumerate(rows)
        ],
        "model": f"{result['profile']}/{result['variant']}",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
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
    document = await service.models()
    if ref.model_id is not None:  # one model of a multiplexed profile
        service.route(ref.profile, Routing(model_id=ref.model_id))  # 403/404 for a bad id
        pool = document.get("multiplexed", {}).get(ref.profile, {})
        return {**_card(str(ref)), "profile": ref.profile, "variant": None, "multiplexed": pool}
    entry = document["profiles"][ref.profile]
    clip = entry["clip"] if ref.variant is None else {ref.variant: entry["clip"][ref.variant]}
    return {
        **_card(str(ref)),
        "profile": ref.profile,
        "variant": ref.variant,
        "default": ref.profile == document["default_profile"],
        "clip": clip,
        "resnet": entry["resnet"],
    }

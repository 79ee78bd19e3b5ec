"""Which model a v1 request names: the body's `model` or `profile`, else the X-Clipfleet-Model
header, in the one grammar of clipfleet.modelref."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Header

from clipfleet.errors import InvalidRequestError
from clipfleet.ingress.targets import Routing
from clipfleet.modelref import MAX_MODEL_REF_CHARS, parse_model_ref

MODEL_HEADER = "X-Clipfleet-Model"


async def model_header(
    model: Annotated[
        str | None,
        Header(
            alias=MODEL_HEADER,
            max_length=MAX_MODEL_REF_CHARS,
            description="<profile>, <profile>/<variant> or <profile>:<model-id>",
        ),
    ] = None,
) -> str | None:
    return model


ModelHeader = Annotated[str | None, Depends(model_header)]


def select(
    profile: str | None, model: str | None, header: str | None, routing: Routing
) -> tuple[str | None, Routing]:
    """(profile name, routing) for the service; the body's choice wins over the header."""
    text, param = (model, "model") if model is not None else (header, MODEL_HEADER)
    if text is None or (model is None and profile is not None):
        return profile, routing
    try:
        ref = parse_model_ref(text)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param, status=422) from None
    variant = ref.variant or routing.variant
    return ref.profile, dataclasses.replace(routing, variant=variant, model_id=ref.model_id)

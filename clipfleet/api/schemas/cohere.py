"""Cohere's `POST /v2/embed` body and answer (the `cohere` SDK's `ClientV2.embed`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from clipfleet.api.schemas.content_parts import Parts, Peer
from clipfleet.api.schemas.v1 import HARD_MAX_BASE64, HARD_MAX_ITEMS, Dimensions, Text
from clipfleet.modelref import MAX_MODEL_REF_CHARS
from clipfleet.models.quantize import VectorType

InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]


class CohereInput(Peer):
    """One input of `inputs`: its content parts make one vector (see content_parts)."""

    content: Parts


class CohereEmbedRequest(Peer):
    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_REF_CHARS,
        description="`<profile>`, `<profile>/<variant>` or `<profile>:<model-id>`",
    )
    input_type: InputType | None = Field(
        None, description="accepted; CLIP embeds queries and documents alike"
    )
    texts: Annotated[list[Text], Field(min_length=1, max_length=HARD_MAX_ITEMS)] | None = None
    images: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=HARD_MAX_BASE64)]],
            Field(min_length=1, max_length=HARD_MAX_ITEMS),
        ]
        | None
    ) = Field(None, description="data:image/... URLs (http(s) URLs too)")
    inputs: Annotated[list[CohereInput], Field(min_length=1, max_length=HARD_MAX_ITEMS)] | None = (
        None
    )
    embedding_types: Annotated[list[VectorType], Field(min_length=1, max_length=6)] = ["float"]
    output_dimension: Dimensions = None
    truncate: Literal["NONE", "START", "END"] | None = Field(
        None, description="END (the default) only: texts are cut at the model's context"
    )
    max_tokens: int | None = Field(None, ge=1, description="not supported: leave it out")
    priority: int | None = Field(None, description="accepted and ignored")

    @field_validator("truncate")
    @classmethod
    def _end_only(cls, value: str | None) -> str | None:
        if value not in (None, "END"):
            raise ValueError(
                "clipfleet truncates texts at the end, to the model's context (77 tokens for "
                "CLIP): send truncate END or leave it out"
            )
        return value

    @field_validator("max_tokens")
    @classmethod
    def _no_max_tokens(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("max_tokens is not supported: texts are cut at the model's context")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if sum(field is not None for field in (self.texts, self.images, self.inputs)) != 1:
            raise ValueError("give exactly one of `texts`, `images` or `inputs`")
        return self


class BilledUnits(BaseModel):
    input_tokens: int
    images: int


class CohereMeta(BaseModel):
    api_version: dict[str, str]
    billed_units: BilledUnits


class CohereEmbedResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"
    embeddings: dict[str, list[list[int]] | list[list[float]] | list[str]] = Field(
        description="one list per requested embedding type (float, int8, uint8, binary, "
        "ubinary, base64), in input order"
    )
    texts: list[str] = Field(description="the text inputs, as embedded")
    meta: CohereMeta
    model: str = Field(description="the profile/variant that served every vector here")
    embedding_space: str

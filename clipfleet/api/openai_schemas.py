"""OpenAI's embeddings and models bodies (`POST /v1/embeddings`, `GET /v1/models`).

Kept apart from schemas.py: these follow OpenAI's field names and shapes, not clipfleet's.
`modality` is infinity's extension (SDKs send it with `extra_body`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from clipfleet.api.schemas import HARD_MAX_BASE64, HARD_MAX_ITEMS, Dimensions, EncodingFormat
from clipfleet.modelref import MAX_MODEL_REF_CHARS

# A text, an http(s) URL or a data: URL; the service's limits (max_text_chars, fetch.max_bytes)
# apply per modality.
InputItem = Annotated[str, Field(min_length=1, max_length=HARD_MAX_BASE64)]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: InputItem | Annotated[list[InputItem], Field(min_length=1, max_length=HARD_MAX_ITEMS)]
    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_REF_CHARS,
        description="`<profile>`, `<profile>/<variant>` or `<profile>:<model-id>` (GET /v1/models)",
    )
    encoding_format: EncodingFormat = "float"
    dimensions: Dimensions = None
    modality: Literal["text", "image"] = Field(
        "text", description="`image`: each input is an http(s) URL or a data: URL"
    )
    user: str | None = Field(None, max_length=256, description="accepted and ignored")

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        """One clear message per mistake (the union's own errors name its members)."""
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, int | list) for item in items):
            raise PydanticCustomError(
                "token_arrays",
                "token arrays aren't supported: send `input` as a string or a list of strings "
                "(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))",
            )
        if not items or not all(isinstance(item, str) and item for item in items):
            raise PydanticCustomError(
                "input_strings", "`input` must be a non-empty string or list of non-empty strings"
            )
        return value


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: encoding_format=base64


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelDetail(ModelCard):
    """One id's detail: its CLIP variant(s) (model, weights source, device, runtime, traffic,
    cache, batch sizes) and the profile's ResNet."""

    profile: str
    variant: str | None
    default: bool = Field(False, description="this is the default profile")
    clip: dict[str, dict[str, Any]] | None = None
    resnet: dict[str, Any] | None = None
    multiplexed: dict[str, Any] | None = Field(
        None, description="a multiplexed profile's pool (for `<profile>:<model-id>` ids)"
    )

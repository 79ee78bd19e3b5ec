"""OpenAI's embeddings and models bodies (`POST /v1/embeddings`, `GET /v1/models`).

Kept apart from v1.py: these follow OpenAI's field names and shapes, not clipfleet's.
`modality` is infinity's extension (SDKs send it with `extra_body`), with `auto` for NV-CLIP's
mixed lists; `messages` and content parts in `input` are vLLM's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from clipfleet.api.schemas.content_parts import ContentPart, Modality, Parts
from clipfleet.api.schemas.v1 import (
    HARD_MAX_BASE64,
    HARD_MAX_ITEMS,
    Dimensions,
    EncodingFormat,
    Text,
)
from clipfleet.modelref import MAX_MODEL_REF_CHARS

# A text, an http(s) URL or a data: URL; the service's limits (max_text_chars, fetch.max_bytes)
# apply per modality.
InputItem = Annotated[str, Field(min_length=1, max_length=HARD_MAX_BASE64)]


def _string_or_part(value: Any) -> str:
    return "~part" if isinstance(value, dict) else "~string"


def _one_or_list(value: Any) -> str:
    return "~list" if isinstance(value, list) else "~string"


# Union members are tagged (`~`: left out of error params) so errors name `input[i]` alone.
InputEntry = Annotated[
    Annotated[InputItem, Tag("~string")] | Annotated[ContentPart, Tag("~part")],
    Discriminator(_string_or_part),
]
Input = Annotated[
    Annotated[InputItem, Tag("~string")]
    | Annotated[list[InputEntry], Tag("~list"), Field(min_length=1, max_length=HARD_MAX_ITEMS)],
    Discriminator(_one_or_list),
]


class ChatMessage(BaseModel):
    """vLLM's chat-style embedding input: the content of every message makes one vector."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field("user", max_length=32, description="any role; only the content counts")
    content: Text | Parts
    name: str | None = Field(None, max_length=256)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Input | None = Field(
        None,
        description="strings (see `modality`) and/or content parts (`{type: text | image_url}`),"
        " one vector each",
    )
    messages: (
        Annotated[list[ChatMessage], Field(min_length=1, max_length=HARD_MAX_ITEMS)] | None
    ) = Field(None, description="vLLM's chat form: one vector for all the messages' content")
    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_REF_CHARS,
        description="`<profile>`, `<profile>/<variant>` or `<profile>:<model-id>` (GET /v1/models)",
    )
    encoding_format: EncodingFormat = "float"
    dimensions: Dimensions = None
    modality: Modality = Field(
        "text",
        description="how string inputs are read: `image`: each is an http(s) URL or a data: URL;"
        " `auto`: data:image/ URLs and http(s) URLs ending in an image type are images, the rest"
        " text (docs/clients.md)",
    )
    user: str | None = Field(None, max_length=256, description="accepted and ignored")

    @model_validator(mode="after")
    def _input_or_messages(self):
        if (self.input is None) == (self.messages is None):
            raise ValueError("give either `input` or `messages`")
        return self

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
        if value is None:
            return value
        if not items or not all(
            (isinstance(item, str) and item) or isinstance(item, dict) for item in items
        ):
            raise PydanticCustomError(
                "input_strings",
                "`input` must be a non-empty string, or a list of non-empty strings and content "
                "parts",
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
    embedding_space: str = Field(description="the space of every vector here (docs/models.md)")


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
    embedding_space: str | None = Field(
        None, description="a multiplexed model's space (null until a replica has loaded it)"
    )

"""Rerank and pair-score bodies in the peers' shapes: Cohere / Jina `POST /v1/rerank` and
`/v2/rerank` (also vLLM's `/rerank`), and vLLM's `POST /score` (`text_1` / `text_2`, `queries` /
`documents` or `data_1` / `data_2`), which `POST /v1/score` also accepts beside clipfleet's own
`pairs` body. Union members carry `~`-prefixed tags, which error params leave out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from clipfleet.api.schemas.content_parts import ContentPart, Modality, Parts, Peer
from clipfleet.api.schemas.v1 import HARD_MAX_BASE64, HARD_MAX_ITEMS, ScoreRequest
from clipfleet.modelref import MAX_MODEL_REF_CHARS

Reference = Annotated[str, Field(min_length=1, max_length=HARD_MAX_BASE64)]
ModelName = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_MODEL_REF_CHARS,
        description="`<profile>`, `<profile>/<variant>` or `<profile>:<model-id>`; default: the "
        "default profile",
    ),
]


class MultiModal(Peer):
    """vLLM's ScoreMultiModalParam: `{"content": [parts]}`."""

    content: Parts


class ImageDocument(Peer):
    """Jina's image document: `{"image": "https://... | data:image/..."}`."""

    image: Reference


def _kind(value: Any) -> str:
    if not isinstance(value, dict):
        return "~string"  # a string, or a mistake best answered by "should be a string"
    if "type" in value:
        return "~part"
    if "content" in value:
        return "~content"
    if set(value) == {"image"}:
        return "~image"
    return "~fields"


# A string (see `modality`), a content part, `{"image": url}`, or Cohere's / Jina's text object
# (`{"text": ...}`, or any string fields with `rank_fields`).
Document = Annotated[
    Annotated[Reference, Tag("~string")]
    | Annotated[ContentPart, Tag("~part")]
    | Annotated[ImageDocument, Tag("~image")]
    | Annotated[dict[str, Annotated[str, Field(max_length=HARD_MAX_BASE64)]], Tag("~fields")],
    Discriminator(_kind),
]
Query = Annotated[
    Annotated[Reference, Tag("~string")]
    | Annotated[ContentPart, Tag("~part")]
    | Annotated[MultiModal, Tag("~content")]
    | Annotated[ImageDocument, Tag("~image")]
    | Annotated[dict[str, Annotated[str, Field(max_length=HARD_MAX_BASE64)]], Tag("~fields")],
    Discriminator(_kind),
]
Documents = Annotated[list[Document], Field(min_length=1, max_length=HARD_MAX_ITEMS)]
Ignored = Field(None, description="accepted and ignored (CLIP truncates at its context)")


class RerankRequest(Peer):
    model: ModelName = None
    query: Query
    documents: Annotated[
        Annotated[Documents, Tag("~list")] | Annotated[MultiModal, Tag("~content")],
        Discriminator(_list_or_content),
    ]
    top_n: int | None = Field(None, ge=0, le=HARD_MAX_ITEMS, description="0 or absent: all")
    return_documents: bool = Field(False, description="echo each document in its result")
    rank_fields: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=32, description="Cohere v1: the fields of object documents to rank on"
    )
    modality: Modality = Field(
        "auto", description="how plain strings are read (auto: docs/clients.md)"
    )
    max_chunks_per_doc: int | None = Ignored
    max_tokens_per_doc: int | None = Ignored
    truncate_prompt_tokens: int | None = Ignored
    priority: int | None = Field(None, description="accepted and ignored")


def _side_kind(value: Any) -> str:
    if isinstance(value, list):
        return "~list"
    return "~content" if isinstance(value, dict) else "~string"


def _list_or_content(value: Any) -> str:
    return "~content" if isinstance(value, dict) else "~list"


ScoreSide = Annotated[
    Annotated[Reference, Tag("~string")]
    | Annotated[
        Annotated[list[Reference], Field(min_length=1, max_length=HARD_MAX_ITEMS)], Tag("~list")
    ]
    | Annotated[MultiModal, Tag("~content")],
    Discriminator(_side_kind),
]
SIDES = (("text_1", "text_2"), ("queries", "documents"), ("data_1", "data_2"))


class VllmScoreRequest(Peer):
    model: ModelName = None
    text_1: ScoreSide | None = None
    text_2: ScoreSide | None = None
    queries: ScoreSide | None = None
    documents: ScoreSide | None = None
    data_1: ScoreSide | None = None
    data_2: ScoreSide | None = None
    modality: Modality = "auto"
    truncate_prompt_tokens: int | None = Ignored
    priority: int | None = Field(None, description="accepted and ignored")

    @model_validator(mode="after")
    def _one_pair_of_sides(self):
        given = [pair for pair in SIDES if any(getattr(self, side) is not None for side in pair)]
        if len(given) != 1 or any(getattr(self, side) is None for side in given[0]):
            raise ValueError(
                "give one pair of sides: text_1 and text_2, queries and documents, or data_1 "
                "and data_2"
            )
        return self

    def sides(self) -> tuple[tuple[str, Any], tuple[str, Any]]:
        """((name, value), (name, value)) of the pair this request uses."""
        for first, second in SIDES:
            if getattr(self, first) is not None:
                return (first, getattr(self, first)), (second, getattr(self, second))
        raise AssertionError("validated: one pair is set")


def _score_body_kind(value: Any) -> str:
    return "~pairs" if isinstance(value, dict) and "pairs" in value else "~vllm"


ScoreBody = Annotated[
    Annotated[ScoreRequest, Tag("~pairs")] | Annotated[VllmScoreRequest, Tag("~vllm")],
    Discriminator(_score_body_kind),
]


class RerankDocumentOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # Cohere v1 echoes object documents as sent

    text: str | None = None
    image: str | None = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocumentOut | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: dict[str, Any]
    activation: Literal["softmax", "sigmoid"]
    embedding_space: str


class VllmScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class VllmUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class VllmScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[VllmScoreData]
    usage: VllmUsage
    activation: Literal["softmax", "sigmoid"]
    embedding_space: str

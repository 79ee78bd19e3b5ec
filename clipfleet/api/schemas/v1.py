"""Typed, bounded request and response bodies of the v1 API.

The bounds here are hard caps that reject absurd input before any work is done; the
operator's (smaller) limits from serve_config.yaml are enforced by the service.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clipfleet.modelref import MAX_MODEL_REF_CHARS, parse_model_ref

HARD_MAX_ITEMS = 4096
HARD_MAX_TEXT = 100_000
HARD_MAX_BASE64 = 64 * 1024 * 1024
HARD_MAX_DIMENSIONS = 65536

# Field types the JSON bodies and the multipart forms (routes/v1.py's */upload) share.
Text = Annotated[str, Field(min_length=1, max_length=HARD_MAX_TEXT)]
ProfileName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")]
Label = Annotated[str, Field(min_length=1, max_length=200)]
Labels = Annotated[list[Label], Field(min_length=1, max_length=HARD_MAX_ITEMS)]
TopK = Annotated[int, Field(ge=1, le=HARD_MAX_ITEMS)]
PromptTemplate = Annotated[str, Field(min_length=1, max_length=500)]
# sigmoid (SigLIP) models: every label at or above this probability (default 0.5)
Threshold = Annotated[float, Field(ge=0.0, le=1.0)]
Encoder = Literal["clip", "resnet"]
EncodingFormat = Annotated[
    Literal["float", "base64"],
    Field(description="`base64`: each vector's little-endian float32 bytes, base64-encoded"),
]
VectorEncoding = Annotated[
    Literal["float", "base64", "int8", "uint8", "binary", "ubinary"],
    Field(
        description="`base64`: little-endian float32 bytes; `int8` / `uint8`: scalar-quantised "
        "with the model's int8_limit; `binary` / `ubinary`: packed sign bits (docs/models.md)"
    ),
]
Dimensions = Annotated[
    int | None,
    # strict: JSON's `true` is not the integer 1
    Field(
        ge=1,
        le=HARD_MAX_DIMENSIONS,
        strict=True,
        description="keep the first N dimensions, re-normalised",
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelChoice(Strict):
    """`model` (`<profile>`, `<profile>/<variant>` or `<profile>:<model-id>`, the grammar of
    clipfleet.modelref) or `profile`, not both."""

    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_REF_CHARS)

    @model_validator(mode="after")
    def _model_or_profile(self):
        if self.model is None:
            return self
        if getattr(self, "profile", None) is not None:
            raise ValueError("give either `model` or `profile`, not both")
        parse_model_ref(self.model)  # ValueError says what's wrong with it
        return self


class ImageRef(Strict):
    """An image by http(s) `url` or inline `base64` (a data: URL prefix is accepted)."""

    url: str | None = Field(None, min_length=1, max_length=8192)
    base64: str | None = Field(None, min_length=1, max_length=HARD_MAX_BASE64)

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        if (self.url is None) == (self.base64 is None):
            raise ValueError("give exactly one of `url` or `base64`")
        return self


class EmbedImageRequest(ModelChoice):
    images: list[ImageRef] = Field(min_length=1, max_length=HARD_MAX_ITEMS)
    encoder: Encoder = "clip"
    profile: ProfileName | None = None
    encoding_format: VectorEncoding = "float"
    dimensions: Dimensions = None


class EmbedTextRequest(ModelChoice):
    texts: list[Text] = Field(min_length=1, max_length=HARD_MAX_ITEMS)
    profile: ProfileName | None = None
    encoding_format: VectorEncoding = "float"
    dimensions: Dimensions = None


class ScorePair(Strict):
    image: ImageRef
    text: Text


class ScoreRequest(ModelChoice):
    pairs: list[ScorePair] = Field(min_length=1, max_length=HARD_MAX_ITEMS)
    profile: ProfileName | None = None


class TagRequest(ModelChoice):
    image: ImageRef
    labels: Labels | None = None
    top_k: TopK = 5
    prompt_template: PromptTemplate | None = None
    profile: ProfileName | None = None
    threshold: Threshold | None = None


class Served(BaseModel):
    profile: str
    variant: str
    model: str


class EmbeddingResponse(Served):
    # str: encoding_format=base64; int: int8 / uint8 / binary / ubinary
    embeddings: list[list[float]] | list[str] | list[list[int]]
    dim: int
    encoder: Literal["clip", "resnet"]
    embedding_space: str = Field(description="the space of these vectors (docs/models.md)")


class ScoreResult(BaseModel):
    clip_score: float
    cosine: float
    probability: float | None = None  # sigmoid (SigLIP) models: the model's own probability


class ScoreResponse(Served):
    results: list[ScoreResult]
    activation: Literal["softmax", "sigmoid"] = "softmax"


class Tag(BaseModel):
    label: str
    confidence: float


class TagResponse(Served):
    tags: list[Tag]
    # softmax: confidences are a distribution over the labels; sigmoid: independent per label
    activation: Literal["softmax", "sigmoid"] = "softmax"


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody

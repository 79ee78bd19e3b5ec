"""The OpenAPI document's component names are what clients' code generators built from: those of
the tree before issue 25's move (70c2074), whatever module a model now lives in."""

from __future__ import annotations

import json
from types import SimpleNamespace

from clipfleet.api.app import create_app
from clipfleet.api.settings import AuthConfig, CorsConfig
from clipfleet.config import ApiLimits

COMPONENTS = [
    "BatchEmbeddingResponse",
    "BatchEvaluationRequest",
    "BatchEvaluationResponse",
    "BilledUnits",
    "Body_embed_image_embed_image_post",
    "Body_embed_image_upload_v1_embed_image_upload_post",
    "Body_get_clip_vector_get_clip_vector_post",
    "Body_get_resnet_vector_get_resnet_vector_post",
    "Body_score_upload_v1_score_upload_post",
    "Body_tag_tag_post",
    "Body_tag_upload_v1_tag_upload_post",
    "ChatMessage",
    "CohereEmbedRequest",
    "CohereEmbedResponse",
    "CohereInput",
    "CohereMeta",
    "EmbedImageRequest",
    "EmbedResponse",
    "EmbedTextRequest",
    "EmbeddingObject",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorBody",
    "ErrorResponse",
    "EvaluationRequest",
    "EvaluationResult",
    "HTTPValidationError",
    "ImageDocument",
    "ImagePart",
    "ImageRef",
    "ImageUrl",
    "ModelCard",
    "ModelDetail",
    "ModelList",
    "MultiModal",
    "PetTag",
    "RerankDocumentOut",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "RerankUsage",
    "ScorePair",
    "ScoreRequest",
    "ScoreResponse",
    "ScoreResult",
    "Tag",
    "TagRequest",
    "TagResponse",
    "TextEmbedRequest",
    "TextPart",
    "Usage",
    "ValidationError",
    "VllmScoreData",
    "VllmScoreRequest",
    "VllmScoreResponse",
    "VllmUsage",
    "clipfleet__api__compat__seed003__EmbeddingResponse",
    "clipfleet__api__schemas__EmbeddingResponse",
]


def app():
    settings = SimpleNamespace(
        args=SimpleNamespace(limits=ApiLimits(), auth=AuthConfig(), cors=CorsConfig())
    )
    return create_app(settings)


def document() -> dict:
    return app().openapi()


def test_component_names_are_the_ones_clients_generated_code_from():
    assert sorted(document()["components"]["schemas"]) == COMPONENTS


def test_every_reference_names_a_component():
    openapi = document()
    text = json.dumps(openapi)
    refs = {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}
    assert refs <= set(openapi["components"]["schemas"])
    assert "clipfleet__api__schemas__EmbeddingResponse" in refs


def test_the_document_is_built_once():
    built = app()
    assert built.openapi() is built.openapi()

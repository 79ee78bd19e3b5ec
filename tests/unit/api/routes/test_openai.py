"""The OpenAI-compatible routes through the official `openai` SDK, over the Ray-free local DAG
(the SDK sends through the unit tier's TestClient): the SDK's defaults (base64), its options,
its errors, its model list."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from clipfleet.config import AuthConfig
from tests.support.images import image_base64
from tests.support.local_dag import build_local_service
from tests.support.peer_clients import sdk_over, vectors

TEXTS = ["a photo of a cat", "a red dress"]


@pytest.fixture(scope="module")
def sdk(client):
    return sdk_over(client)  # not closed here: that would close the module's client


@pytest.fixture(scope="module")
def http(client):
    return client


def native(http: httpx.Client, path: str, body: dict) -> np.ndarray:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


@pytest.mark.parametrize("model", ["fast", "accurate/stable"])
def test_sdk_default_base64_equals_embed_text(sdk, http, model):
    result = sdk.embeddings.create(model=model, input=TEXTS)  # the SDK asks for base64
    profile = model.partition("/")[0]
    expected = native(http, "/v1/embed/text", {"texts": TEXTS, "profile": profile})
    np.testing.assert_allclose(vectors(result), expected, atol=1e-6)
    assert result.object == "list" and result.model == f"{profile}/stable"


def test_sdk_float_and_usage_counts_start_and_end_tokens(sdk, http, model_dir):
    result = sdk.embeddings.create(model="fast", input="a cat", encoding_format="float")
    expected = native(http, "/v1/embed/text", {"texts": ["a cat"]})
    np.testing.assert_allclose(vectors(result), expected, atol=1e-6)
    assert result.usage.prompt_tokens == 4 == result.usage.total_tokens  # <sot> a cat <eot>
    # The tiny transformers model has its own toy vocabulary: ask its tokenizer directly.
    hf_tokens = len(AutoTokenizer.from_pretrained(model_dir / "hf_clip")("a cat")["input_ids"])
    long_text = " ".join(["cat"] * 200)  # truncated to the 77-token context, as embed/text does
    for model, short in (("fast", 4), ("accurate", hf_tokens)):
        usage = sdk.embeddings.create(model=model, input=[long_text, "a cat"]).usage
        assert usage.prompt_tokens == 77 + short, model


def test_sdk_dimensions_truncate_and_renormalise(sdk, http):
    result = sdk.embeddings.create(model="fast", input=TEXTS, dimensions=8)
    head = native(http, "/v1/embed/text", {"texts": TEXTS})[:, :8]
    expected = head / np.linalg.norm(head, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors(result), expected, atol=1e-6)
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.embeddings.create(model="fast", input="a cat", dimensions=33)
    assert raised.value.param == "dimensions"


def test_sdk_images_via_extra_body_equal_embed_image(sdk, http, image_url):
    data_url = "data:image/jpeg;base64," + image_base64()
    result = sdk.embeddings.create(
        model="fast", input=[image_url, data_url], extra_body={"modality": "image"}
    )
    images = [{"url": image_url}, {"base64": image_base64()}]
    expected = native(http, "/v1/embed/image", {"images": images})
    np.testing.assert_allclose(vectors(result), expected, atol=1e-6)
    assert result.usage.prompt_tokens == 0
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.embeddings.create(
            model="fast", input=[image_url, "/etc/passwd"], extra_body={"modality": "image"}
        )
    assert raised.value.param == "input[1]"


def test_sdk_models_list_and_retrieve(sdk):
    ids = [model.id for model in sdk.models.list()]
    assert ids == ["fast", "fast/stable", "accurate", "accurate/stable"]
    model = sdk.models.retrieve("fast/stable")
    assert model.id == "fast/stable" and model.owned_by == "clipfleet"
    detail = model.model_dump()
    assert detail["clip"]["stable"]["embed_dim"] == 32 and detail["default"] is True


@pytest.mark.parametrize("model", ["nope", "fast/canary", "fast:org/model", "Not-A-Ref"])
def test_sdk_unknown_model_is_not_found(sdk, model):
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.embeddings.create(model=model, input="a cat")
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(model)


def test_headers_name_the_served_variant(sdk):
    raw = sdk.embeddings.with_raw_response.create(model="accurate", input="a cat")
    assert raw.headers["X-Clipfleet-Profile"] == "accurate"
    assert raw.headers["X-Clipfleet-Variant"] == "stable"


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"input": [[1, 2, 3]]}, 422, "input", "token arrays"),
        ({"input": [1, 2, 3]}, 422, "input", "token arrays"),
        ({"input": ["x"] * 65}, 413, "input", "limit is 64"),
        ({"input": ["ok", "x" * 1001]}, 422, "input[1]", "limit is 1000"),
        ({"input": []}, 422, "input", ""),
        ({"input": "x", "encoding_format": "int8"}, 422, "encoding_format", ""),
    ],
)
def test_bad_requests_use_the_envelope_with_code(http, body, status, param, words):
    response = http.post("/v1/embeddings", json={"model": "fast", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["param"] == param and words in error["message"]


def test_base64_is_little_endian_float32(http):
    body = {"model": "fast", "input": "a cat", "encoding_format": "base64"}
    encoded = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_array_equal(decoded, native(http, "/v1/embed/text", {"texts": ["a cat"]})[0])


def test_embed_routes_take_dimensions_and_encoding_format(http):
    full = native(http, "/v1/embed/text", {"texts": TEXTS})
    body = {"texts": TEXTS, "dimensions": 4, "encoding_format": "base64"}
    response = http.post("/v1/embed/text", json=body).json()
    assert response["dim"] == 4
    decoded = np.stack([np.frombuffer(base64.b64decode(r), "<f4") for r in response["embeddings"]])
    expected = full[:, :4] / np.linalg.norm(full[:, :4], axis=1, keepdims=True)
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    images = {"images": [{"base64": image_base64()}], "encoder": "resnet", "dimensions": 16}
    image_response = http.post("/v1/embed/image", json=images).json()
    assert image_response["dim"] == 16 and len(image_response["embeddings"][0]) == 16
    too_many = http.post("/v1/embed/text", json={"texts": TEXTS, "dimensions": 64})
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "dimensions"


def test_status_keeps_the_models_document(http):
    status = http.get("/v1/status").json()
    assert status["default_profile"] == "fast" and "rollback_policy" in status
    assert status["profiles"]["accurate"]["clip"]["stable"]["backend"] == "transformers"
    assert {"deployments", "encoders", "traffic"} <= set(status)


def test_openapi_declares_the_api_key_schemes(http):
    schema = http.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "or `X-API-Key`",
    }
    either = [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert schema["paths"]["/v1/embeddings"]["post"]["security"] == either
    assert schema["paths"]["/v1/score"]["post"]["security"] == either
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_sdk_sends_its_api_key(client_for, tiny_args, monkeypatch):
    monkeypatch.setenv("CLIPFLEET_TEST_OPENAI_KEYS", "sdk-key")
    auth = AuthConfig(api_keys_env="CLIPFLEET_TEST_OPENAI_KEYS")
    keyed_client = client_for(build_local_service(tiny_args.model_copy(update={"auth": auth})))
    keyed = sdk_over(keyed_client, api_key="sdk-key")
    assert keyed.embeddings.create(model="fast", input="a cat").data
    wrong = sdk_over(keyed_client, api_key="wrong")
    with pytest.raises(openai.PermissionDeniedError):
        wrong.models.list()


def test_model_variant_pins_like_the_header(client_for, tiny_args):
    fast = tiny_args.profiles["fast"]
    canary = tiny_args.profiles["accurate"].clip  # a different model as the canary
    variants = {"stable": fast.clip, "canary": canary}
    profiles = {**tiny_args.profiles, "fast": fast.model_copy(update={"variants": variants})}
    http = client_for(build_local_service(tiny_args.model_copy(update={"profiles": profiles})))
    sdk = sdk_over(http)
    raw = sdk.embeddings.with_raw_response.create(model="fast/canary", input=TEXTS)
    assert raw.headers["X-Clipfleet-Variant"] == "canary"
    assert raw.parse().model == "fast/canary"
    pinned = http.post(
        "/v1/embed/text", json={"texts": TEXTS}, headers={"X-Clipfleet-Variant": "canary"}
    )
    expected = np.asarray(pinned.json()["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(vectors(raw.parse()), expected, atol=1e-6)
    stable = native(http, "/v1/embed/text", {"texts": TEXTS})
    assert not np.allclose(expected, stable, atol=1e-3)  # the pin made a difference
    ids = [model.id for model in sdk.models.list()]
    assert ids[:3] == ["fast", "fast/stable", "fast/canary"]

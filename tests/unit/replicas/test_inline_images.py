"""Inline images (base64, uploads) go straight to the encoder, which decodes them once at its
model's input size: the same vectors (to cosine >= 0.99), errors, limits and budget as the old
fetcher path; a request's inline images take one encoder call; URL images are decoded by the
fetcher at the receiving model's input size."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from transformers import Siglip2ImageProcessor, SiglipImageProcessor

from clipfleet.api.app import create_app
from clipfleet.config import ClipModelSpec, FetchLimits, ResNetSpec
from clipfleet.errors import ClipfleetError
from clipfleet.images.decode import decode_image
from clipfleet.images.fetch import ImageSource
from clipfleet.models.device import choose_device
from clipfleet.models.geometry import InputGeometry, hf_processor_geometry
from clipfleet.replicas.clip import ClipEncoder
from clipfleet.replicas.encoder import ResNetEncoder
from clipfleet.replicas.fetcher import Fetcher
from clipfleet.replicas.images import ImageInputs
from tests.support.handles import LocalHandle
from tests.support.hostile import GIANTS, giant_png, hostile_corpus
from tests.support.local_dag import build_local_service, tiny_app_args

CPU = choose_device("cpu")
MIN_COSINE = 0.99


def photo(width: int, height: int, fmt: str = "JPEG", orientation: int | None = None) -> bytes:
    """A smooth picture (compresses and scales like a photo), optionally EXIF-rotated."""
    rng = np.random.default_rng(width * 7 + height)
    coarse = rng.integers(0, 255, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format=fmt, quality=90, exif=exif)
    else:
        image.save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


PHOTOS = {
    "large-jpeg": photo(1600, 1200),  # JPEG draft mode at 1/8
    "portrait-png": photo(300, 520, "PNG"),
    "rotated-jpeg": photo(900, 500, orientation=6),
    "small-webp": photo(100, 80, "WEBP"),  # smaller than the model's input: scaled up by it
}


@pytest.fixture(scope="module")
def encoders(model_dir):
    open_clip = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    hf = ClipModelSpec(backend="transformers", model=str(model_dir / "hf_clip"))
    resnet = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    return {
        "open_clip": ClipEncoder(open_clip, CPU),
        "transformers": ClipEncoder(hf, CPU),
        "resnet": ResNetEncoder(resnet, CPU),
    }


def test_models_name_the_square_their_preprocessing_keeps(encoders):
    # The tiny models' preprocessing: shorter side to 64, centre crop of 64 (open_clip, HF);
    # torchvision's ResNet preset resizes to 256 and crops 224.
    assert encoders["open_clip"].model.input_geometry() == InputGeometry(64, "crop")
    assert encoders["transformers"].model.input_geometry() == InputGeometry(64, "crop")
    assert encoders["resnet"].model.input_geometry() == InputGeometry(256, "crop")
    siglip = SiglipImageProcessor(size={"height": 224, "width": 224})
    assert hf_processor_geometry(siglip) == InputGeometry(224, "squash")
    assert hf_processor_geometry(Siglip2ImageProcessor()) is None  # NaFlex: patches, no square


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("kind", ["open_clip", "transformers", "resnet"])
def test_inline_images_embed_as_the_fetcher_path_did(encoders, kind, name):
    """Decoded by the encoder at its model's square vs. by the fetcher at 448 px then resized
    by the model (the old path): the same embedding to cosine >= 0.99."""
    encoder = encoders[kind]
    data = PHOTOS[name]
    old = encoder.model.embed_images([decode_image(data, FetchLimits())])[0]
    source = ImageSource(base64=base64.b64encode(data).decode())
    new = asyncio.run(encoder.embed_image(source))
    assert float(np.dot(old, new)) >= MIN_COSINE


def test_the_square_is_what_gets_decoded():
    inputs = ImageInputs(FetchLimits())
    received = inputs.received(ImageSource(data=PHOTOS["large-jpeg"]))
    assert asyncio.run(inputs.model_input(received, Shape())) == (224, 224, 3)
    inputs.close()


# -- the same errors and limits, through the API ---------------------------------------------
LIMITS = FetchLimits(max_bytes=2_000_000)


@pytest.fixture(scope="module")
def local(model_dir):
    service = build_local_service(tiny_app_args(model_dir, fetch=LIMITS))
    with TestClient(create_app(service)) as client:
        yield service, client


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (the giants are decoded by test_hostile_inputs; an empty base64 string is refused earlier, by
# the request schema)
CORPUS = hostile_corpus()


@pytest.mark.parametrize("name", sorted(set(CORPUS) - set(GIANTS) - {"empty"}))
def test_hostile_inline_images_get_the_url_paths_envelope(local, name):
    """Every image in the hostile corpus, sent inline, gets the status and type it gets by URL
    (tests/unit/images/test_hostile_inputs.py), naming its item."""
    _, client = local
    case = CORPUS[name]
    images = [{"base64": _b64(PHOTOS["small-webp"])}, {"base64": _b64(case.body)}]
    response = client.post("/v1/embed/image", json={"images": images})
    assert response.status_code == case.status, response.text
    if case.status != 200:
        error = response.json()["error"]
        assert (error["type"], error["param"]) == (case.error_type, "images[1]")
        assert "Traceback" not in response.text


def test_inline_limits_and_the_failing_items_name(local):
    _, client = local
    too_big = _b64(b"\xff" * (LIMITS.max_bytes + 10))
    ok = "data:image/jpeg;base64," + _b64(PHOTOS["rotated-jpeg"])
    bad = "data:image/png;base64," + _b64(b"<html>not an image</html>")
    response = client.post("/v1/embed/image", json={"images": [{"base64": too_big}]})
    assert response.status_code == 413 and response.json()["error"]["param"] == "images[0]"
    body = {"model": "fast", "modality": "image", "input": [ok, ok, bad]}
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["param"] == "input[2]"
    upload = client.post(
        "/v1/embed/image/upload", files={"image": ("x.bin", b"\x00" * 64, "image/png")}
    )
    assert upload.status_code == 415 and upload.json()["error"]["param"] == "images[0]"


def _inline_image_requests() -> list[tuple[str, dict]]:
    """The routes that take several images, each with all of PHOTOS inline (issue 24's too)."""
    urls = [f"data:image/jpeg;base64,{_b64(data)}" for data in PHOTOS.values()]
    parts = [{"content": [{"type": "image_url", "image_url": {"url": url}}]} for url in urls]
    return [
        ("/v1/embed/image", {"images": [{"base64": _b64(data)} for data in PHOTOS.values()]}),
        ("/v1/embeddings", {"model": "fast", "modality": "image", "input": urls}),
        (
            "/v1/rerank",
            {"model": "fast", "query": "a cat", "documents": [{"image": u} for u in urls]},
        ),
        (
            "/v2/embed",
            {"model": "fast", "images": urls, "input_type": "image", "embedding_types": ["float"]},
        ),
        (
            "/v2/embed",
            {"model": "fast", "inputs": parts, "embedding_types": ["float"]},
        ),
    ]


@pytest.mark.parametrize(("path", "body"), _inline_image_requests(), ids=lambda x: str(x)[:20])
def test_a_requests_inline_images_take_one_encoder_call_and_no_fetch(local, path, body):
    service, client = local
    fetcher, clip = service.fetcher, service.profiles["fast"].clip["stable"]
    assert isinstance(fetcher, LocalHandle) and isinstance(clip, LocalHandle)
    fetches, clip_calls = len(fetcher.calls), len(clip.calls)
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert len(fetcher.calls) == fetches  # the fetcher was not asked
    image_calls = [call.method for call in clip.calls[clip_calls:] if "image" in call.method]
    assert image_calls == ["embed_images"]


# -- URLs: the fetcher decodes to the receiving model's square ---------------------------------
def test_the_fetcher_decodes_to_the_geometry_it_is_given():
    fetcher = Fetcher(FetchLimits())
    source = ImageSource(data=PHOTOS["large-jpeg"])
    try:
        generic = asyncio.run(fetcher.fetch(source))
        shaped = asyncio.run(fetcher.fetch(source, InputGeometry(224, "crop")))
        squashed = asyncio.run(fetcher.fetch(source, InputGeometry(96, "squash")))
    finally:
        asyncio.run(fetcher.close())
    assert generic.shape == (448, 597, 3)
    assert shaped.shape == (224, 224, 3) and squashed.shape == (96, 96, 3)


async def test_url_images_are_fetched_at_the_encoders_geometry(model_dir):
    service = build_local_service(tiny_app_args(model_dir))

    class AnyImage:
        async def fetch(self, source, geometry=None):
            return np.zeros((64, 64, 3), np.uint8)

    service.fetcher = LocalHandle(AnyImage())
    url = ImageSource(url="https://example.com/cat.jpg")
    await service.embed_images([url, url], "clip", "fast")
    await service.embed_images([url], "resnet", "fast")
    asked = [
        call.args[1] if len(call.args) > 1 else call.kwargs.get("geometry")
        for call in service.fetcher.calls
    ]
    assert asked == [InputGeometry(64, "crop")] * 2 + [InputGeometry(256, "crop")]


# -- the decode budget holds for an encoder's decodes ------------------------------------------
class Shape:
    """A model stand-in whose input is the decoded array's shape."""

    plan = CPU

    def input_geometry(self):
        return InputGeometry(224, "crop")

    def preprocess_image(self, pixels):
        return pixels.shape


async def test_an_encoders_inline_decodes_stay_within_its_budget():
    data = giant_png(*GIANTS["giant_gray16_png"])
    inputs = ImageInputs(FetchLimits(decode_budget_bytes=200 * 1024 * 1024, decode_threads=4))
    peak = 0

    async def watch(task):
        nonlocal peak
        while not task.done():
            peak = max(peak, inputs.decoder.budget.in_use)
            await asyncio.sleep(0.005)

    try:
        decodes = [
            asyncio.ensure_future(
                inputs.model_input(inputs.received(ImageSource(data=data)), Shape())
            )
            for _ in range(3)
        ]
        await asyncio.gather(*(watch(task) for task in decodes))
        assert [task.result() for task in decodes] == [(224, 224, 3)] * 3
    finally:
        inputs.close()
    assert 0 < peak <= 200 * 1024 * 1024


async def test_an_oversized_inline_image_is_refused_before_any_pixel_is_decoded():
    inputs = ImageInputs(FetchLimits(max_pixels=10_000))
    with pytest.raises(ClipfleetError) as caught:
        await inputs.model_input(inputs.received(ImageSource(data=PHOTOS["large-jpeg"])), Shape())
    assert (caught.value.status, caught.value.type) == (413, "payload_too_large")
    assert inputs.decoder.budget.in_use == 0
    inputs.close()

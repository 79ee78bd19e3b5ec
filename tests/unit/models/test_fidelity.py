"""With identical weights, the service's encoders match the reference libraries' own output.

Weights are random, saved to disk, and loaded through the service's own loaders; the reference
is each library's documented path (open_clip preprocess + encode_*, torchvision
weights.transforms() + model, transformers processor + get_*_features).
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from torchvision.models import get_model, get_model_weights
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from clipfleet.config import ClipModelSpec, ResNetSpec
from clipfleet.models.base import ModelLoadError
from clipfleet.models.clip import load_clip_model
from clipfleet.models.open_clip_backend import can_trim_padding, encode_text_trimmed
from clipfleet.models.resnet import ResNetModel
from tests.support.fidelity import CPU, TEXTS, assert_rows_match, mixed_images
from tests.support.tiny_models import TINY_OPEN_CLIP_CFG


@pytest.fixture(scope="module")
def open_clip_pair(model_dir):
    ours = load_clip_model(
        ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}"), CPU, random_weights=False
    )
    name = f"local-dir:{model_dir / 'open_clip'}"
    reference, _, preprocess = open_clip.create_model_and_transforms(name)
    return ours, reference.eval(), preprocess, open_clip.get_tokenizer(name)


@pytest.mark.parametrize("count", [1, 4])
def test_open_clip_images_match(open_clip_pair, count):
    ours, reference, preprocess, _ = open_clip_pair
    images = mixed_images()[:count]
    with torch.inference_mode():
        expected = reference.encode_image(torch.stack([preprocess(image) for image in images]))
    assert_rows_match(ours.embed_images([np.asarray(image) for image in images]), expected)


def test_open_clip_texts_match(open_clip_pair):
    ours, reference, _, tokenizer = open_clip_pair
    with torch.inference_mode():
        expected = reference.encode_text(tokenizer(TEXTS))
    assert_rows_match(ours.encode_texts(TEXTS), expected)
    assert_rows_match(ours.encode_texts(TEXTS[:1]), expected[:1])


def tiny_open_clip(**text_cfg) -> open_clip.model.CLIP:
    torch.manual_seed(3)
    cfg = {**TINY_OPEN_CLIP_CFG, "text_cfg": {**TINY_OPEN_CLIP_CFG["text_cfg"], **text_cfg}}
    return open_clip.model.CLIP(**cfg).eval()


@pytest.mark.parametrize("pool", [{}, {"pool_type": "eos", "eos_id": 49407}])
def test_trimmed_text_tower_matches_the_full_context(pool):
    model = tiny_open_clip(**pool)
    tokens = open_clip.get_tokenizer("ViT-B-32")([*TEXTS, "word " * 100])  # one fills all 77
    assert can_trim_padding(model)
    with torch.inference_mode():
        expected = model.encode_text(tokens)
        for rows in (slice(0, 3), slice(2, 3), slice(0, 4)):  # short batches are cut shorter
            trimmed = encode_text_trimmed(model, tokens[rows])
            torch.testing.assert_close(trimmed, expected[rows], atol=2e-5, rtol=1e-4)


def test_text_towers_that_padding_can_reach_keep_the_full_context():
    assert not can_trim_padding(tiny_open_clip(no_causal_mask=True))
    assert not can_trim_padding(tiny_open_clip(pool_type="last"))


def test_open_clip_weights_file_matches(model_dir, tmp_path):
    """A builtin-style model name with `pretrained` = a checkpoint file loads those weights."""
    config_file = tmp_path / "clipfleet-test-tiny.json"
    config_file.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(config_file)
    reference = open_clip.create_model("clipfleet-test-tiny").eval()
    state_file = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), state_file)
    spec = ClipModelSpec(model="clipfleet-test-tiny", pretrained=str(state_file))
    ours = load_clip_model(spec, CPU, random_weights=False)
    assert ours.info.weights == f"file:{state_file}"
    tokens = open_clip.get_tokenizer("clipfleet-test-tiny")(TEXTS)
    with torch.inference_mode():
        expected = reference.encode_text(tokens)
    assert_rows_match(ours.encode_texts(TEXTS), expected)


def test_local_dir_without_weights_fails_loudly(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG}))
    with pytest.raises(ModelLoadError, match="make weights"):
        load_clip_model(ClipModelSpec(model=f"local-dir:{folder}"), CPU, random_weights=False)


@pytest.mark.parametrize("count", [1, 4])
def test_resnet_matches_torchvision(model_dir, count):
    spec = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    ours = ResNetModel(spec, CPU, random_weights=False)
    reference = get_model("resnet18", weights=None)
    reference.load_state_dict(torch.load(model_dir / "resnet18.pt", weights_only=True))
    reference.fc = torch.nn.Identity()
    transforms = get_model_weights("resnet18").DEFAULT.transforms()
    images = mixed_images()[:count]
    with torch.inference_mode():
        expected = reference.eval()(torch.stack([transforms(image) for image in images]))
    assert_rows_match(ours.embed_images(images), expected)


def test_resnet50_features_are_2048d():
    ours = ResNetModel(ResNetSpec(model="resnet50"), CPU, random_weights=True)
    assert ours.info.embed_dim == 2048 and ours.info.weights == "random"


@pytest.fixture(scope="module")
def hf_pair(model_dir):
    folder = str(model_dir / "hf_clip")
    ours = load_clip_model(
        ClipModelSpec(backend="transformers", model=folder), CPU, random_weights=False
    )
    reference = CLIPModel.from_pretrained(folder).eval()
    return (
        ours,
        reference,
        AutoImageProcessor.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
    )


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("count", [1, 4])
def test_transformers_images_match(hf_pair, count):
    ours, reference, processor, _ = hf_pair
    images = mixed_images()[:count]
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected = _features(reference.get_image_features(pixel_values=pixels))
    assert_rows_match(ours.embed_images([np.asarray(image) for image in images]), expected)


def test_transformers_texts_match(hf_pair):
    ours, reference, _, tokenizer = hf_pair
    with torch.inference_mode():
        tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
        expected = _features(reference.get_text_features(**tokens))
    assert_rows_match(ours.encode_texts(TEXTS), expected)


@pytest.mark.parametrize("random_weights", [False, True])
def test_transformers_image_forward_uses_fused_attention_without_grad(
    model_dir, monkeypatch, random_weights
):
    """The image forward's cost choices, both load paths: SDPA attention (torch's fused kernel,
    one call per layer; eager attention is several matmuls and a softmax each), eval mode, and
    no autograd state kept (inference mode)."""
    model = load_clip_model(
        ClipModelSpec(backend="transformers", model=str(model_dir / "hf_clip")), CPU, random_weights
    )
    fused = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting(query, *args, **kwargs):
        calls.append(torch.is_inference_mode_enabled())
        return fused(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model.embed_images([np.zeros((40, 50, 3), np.uint8)])
    layers = model._model.config.vision_config.num_hidden_layers
    assert calls == [True] * layers and not model._model.training

"""SigLIP / SigLIP 2 through the service's loaders match each library's own forward, and their
score semantics (sigmoid, learned logit_bias) are read from the weights.

The tokenizers are real SentencePiece models trained on a few lines and saved to disk
(tests.support.tiny_models), so the same loading path as a hub tokenizer runs.
"""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from clipfleet.config import ClipModelSpec
from clipfleet.models.clip import load_clip_model
from clipfleet.models.hf_clip_backend import random_clip_config, random_mode_tokenizer
from clipfleet.models.open_clip_backend import load_tokenizer
from tests.support.fidelity import CPU, TEXTS, assert_rows_match, mixed_images
from tests.support.tiny_models import (
    TINY_SIGLIP_CONTEXT,
    make_hf_siglip_dir,
    make_open_clip_siglip_dir,
    make_sentencepiece_tokenizer,
)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip")
    make_open_clip_siglip_dir(folder / "open_clip")
    make_hf_siglip_dir(folder / "hf_v1", version=1)
    make_hf_siglip_dir(folder / "hf_v2", version=2)
    make_sentencepiece_tokenizer(folder / "tokenizer")
    return folder


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# -- open_clip ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_clip_siglip(siglip_dir):
    name = f"local-dir:{siglip_dir / 'open_clip'}"
    ours = load_clip_model(ClipModelSpec(model=name), CPU, random_weights=False)
    reference, _, preprocess = open_clip.create_model_and_transforms(name)
    return ours, reference.eval(), preprocess, open_clip.get_tokenizer(name)


def test_open_clip_siglip_matches_open_clip(open_clip_siglip):
    ours, reference, preprocess, tokenizer = open_clip_siglip
    images = mixed_images()
    with torch.inference_mode():
        expected_images = reference.encode_image(torch.stack([preprocess(i) for i in images]))
        expected_texts = reference.encode_text(tokenizer(TEXTS))
    assert_rows_match(ours.embed_images([np.asarray(image) for image in images]), expected_images)
    assert_rows_match(ours.encode_texts(TEXTS), expected_texts)


def test_open_clip_siglip_semantics_come_from_the_weights(open_clip_siglip):
    ours, reference, _, _ = open_clip_siglip
    semantics = ours.semantics
    assert semantics.activation == "sigmoid"
    assert semantics.logit_bias == pytest.approx(-3.5)  # saved value, not the config's -10
    assert semantics.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert ours.info.as_dict()["activation"] == "sigmoid"


def test_open_clip_clip_is_softmax(model_dir):
    ours = load_clip_model(
        ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}"), CPU, random_weights=False
    )
    assert ours.semantics.activation == "softmax" and ours.info.as_dict()["logit_bias"] == 0


def test_spec_tokenizer_directory_replaces_the_hub_tokenizer(siglip_dir):
    """`tokenizer:` a local directory: the model's own context length and cleaning still apply."""
    tokenizer, note = load_tokenizer("ViT-B-16-SigLIP", str(siglip_dir / "tokenizer"), False)
    assert note == f"transformers:{siglip_dir / 'tokenizer'}"
    tokens = tokenizer(["A  Photo of a CAT!"])
    assert tokens.shape == (1, 64)  # ViT-B-16-SigLIP's context length
    reference = open_clip.tokenizer.HFTokenizer(
        str(siglip_dir / "tokenizer"), context_length=64, clean="canonicalize"
    )
    assert torch.equal(tokens, reference(["A  Photo of a CAT!"]))


def test_random_weights_mode_says_what_it_does_about_tokenizers(siglip_dir):
    stand_in, note = load_tokenizer("ViT-B-16-SigLIP", None, random_weights=True)
    assert note.startswith("stand-in:")
    tokens = stand_in(TEXTS)
    assert tokens.shape == (3, 64) and int(tokens.max()) < 32000  # folded into SigLIP's vocab
    tokenizer, note = load_tokenizer("ViT-B-16-SigLIP", str(siglip_dir / "tokenizer"), True)
    assert note.startswith("transformers:") and tokenizer(TEXTS).shape == (3, 64)
    _, clip_note = load_tokenizer("ViT-B-32", None, random_weights=True)
    assert clip_note == "open_clip"


# -- transformers ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["hf_v1", "hf_v2"])
def hf_siglip(request, siglip_dir):
    folder = str(siglip_dir / request.param)
    ours = load_clip_model(
        ClipModelSpec(backend="transformers", model=folder), CPU, random_weights=False
    )
    reference = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    return ours, reference, processor, AutoTokenizer.from_pretrained(folder)


def test_transformers_siglip_images_match(hf_siglip):
    ours, reference, processor, _ = hf_siglip
    images = mixed_images()
    with torch.inference_mode():
        inputs = processor(images=images, return_tensors="pt")
        expected = _features(reference.get_image_features(**inputs))
    assert_rows_match(ours.embed_images([np.asarray(image) for image in images]), expected)


def test_transformers_siglip_texts_match(hf_siglip):
    ours, reference, _, tokenizer = hf_siglip
    with torch.inference_mode():  # SigLIP's documented use: pad to max_length
        tokens = tokenizer(
            TEXTS,
            padding="max_length",
            max_length=TINY_SIGLIP_CONTEXT,
            truncation=True,
            return_tensors="pt",
        )
        expected = _features(reference.get_text_features(**tokens))
    assert_rows_match(ours.encode_texts(TEXTS), expected)
    assert_rows_match(ours.encode_texts(TEXTS[:1]), expected[:1])


def test_transformers_siglip_model_class_and_semantics(hf_siglip):
    ours, reference, _, _ = hf_siglip
    assert type(ours._model) is type(reference)  # SiglipModel / Siglip2Model from the config
    assert ours.semantics.activation == "sigmoid"
    assert ours.semantics.logit_bias == pytest.approx(-3.5)
    assert ours.semantics.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))


def test_transformers_random_weights_siglip(siglip_dir):
    spec = ClipModelSpec(backend="transformers", model="google/siglip-base-patch16-224")
    config = random_clip_config(spec)
    assert config.model_type == "siglip"
    _, note = random_mode_tokenizer(spec, config)
    assert note.startswith("stand-in:")
    with_tokenizer = spec.model_copy(update={"tokenizer": str(siglip_dir / "tokenizer")})
    _, note = random_mode_tokenizer(with_tokenizer, config)
    assert note == f"transformers:{siglip_dir / 'tokenizer'}"
    tiny = ClipModelSpec(backend="transformers", model=str(siglip_dir / "hf_v1"))
    model = load_clip_model(tiny, CPU, random_weights=True)
    assert model.info.weights == "random" and model.semantics.activation == "sigmoid"

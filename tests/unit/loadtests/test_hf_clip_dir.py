"""The peer benchmark's local Hugging Face CLIP directory (loadtests/hf_clip_dir.py), built with a
tiny config: both servers' loaders read it, and its tokenizer is OpenAI CLIP's BPE."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, CLIPModel

from clipfleet.config import ClipModelSpec
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from loadtests import hf_clip_dir
from tests.support.tiny_models import TINY_HF_CFG

PROMPTS = ["a photo of a cat", "Hello, World! 42 dogs' toys"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return hf_clip_dir.build(tmp_path_factory.mktemp("hf") / "clip", TINY_HF_CFG, seed=1)


def test_the_directory_says_it_holds_random_weights(folder):
    assert hf_clip_dir.is_built(folder)
    assert "RANDOM WEIGHTS" in (folder / hf_clip_dir.MARKER).read_text()
    assert AutoConfig.from_pretrained(folder).vision_config.hidden_size == 64


def test_the_tokenizer_matches_open_clips_bpe(folder):
    expected = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)
    tokens = AutoTokenizer.from_pretrained(folder)(PROMPTS)["input_ids"]
    for row, ids in zip(expected.tolist(), tokens, strict=True):
        assert ids == row[: row.index(49407) + 1]  # start, BPE ids, end: OpenAI's ids
    assert AutoTokenizer.from_pretrained(folder).vocab_size == 49408


def test_the_weights_are_the_seeds(folder, tmp_path):
    again = hf_clip_dir.build(tmp_path / "again", TINY_HF_CFG, seed=1)
    first, second = (CLIPModel.from_pretrained(path).state_dict() for path in (folder, again))
    assert all((first[name] == second[name]).all() for name in first)


def test_the_processor_is_openai_clips(folder):
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.image_processor.crop_size == {"height": 64, "width": 64}
    assert list(processor.image_processor.image_mean) == hf_clip_dir.OPENAI_MEAN


def test_clipfleets_transformers_backend_loads_it_as_real_weights(folder):
    spec = ClipModelSpec(backend="transformers", model=str(folder))
    model = load_clip_model(spec, choose_device("cpu"), random_weights=False)
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    embedding = model.encode_images([model.preprocess_image(image)])
    assert embedding.shape == (1, 32)
    assert model.count_tokens(PROMPTS[:1]) == [7]

"""AppArgs and its parts validate serve_config.yaml's args."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clipfleet.config import AppArgs, BatchingConfig, ClipModelSpec, ProfileSpec

CLIP = ClipModelSpec(model="ViT-B-32", pretrained="openai")


def test_app_args_reject_unknown_keys_and_bad_default():
    with pytest.raises(ValidationError, match="extra"):
        AppArgs(profiles={"fast": ProfileSpec(clip=CLIP)}, surprise=1)
    with pytest.raises(ValidationError, match="default_profile"):
        AppArgs(profiles={"fast": ProfileSpec(clip=CLIP)}, default_profile="accurate")
    with pytest.raises(ValidationError, match="profile name"):
        AppArgs(profiles={"Fast Profile": ProfileSpec(clip=CLIP)}, default_profile="Fast Profile")


def test_transformers_spec_rejects_pretrained_tag():
    with pytest.raises(ValidationError, match="only for backend open_clip"):
        ClipModelSpec(backend="transformers", model="openai/clip-vit-base-patch32", pretrained="x")


def test_batching_bounds():
    with pytest.raises(ValidationError):
        BatchingConfig(max_batch_size=0)
    with pytest.raises(ValidationError):
        BatchingConfig(max_batch_size=8, unknown=True)

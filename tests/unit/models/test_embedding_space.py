"""embedding_space: the same on every replica and restart of the same weights, different when
the weights, runtime, precision or image pipeline change; random weights seeded per spec."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

from clipfleet.config import ClipModelSpec, FetchLimits, ResNetSpec
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.embedding_space import embedding_space, stamp
from clipfleet.models.fingerprint import seeded_init, weights_digest
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.resnet import ResNetModel
from clipfleet.replicas.clip import ClipEncoder
from tests.support.tiny_models import make_open_clip_dir

CPU = choose_device("cpu")
SPACE_OF = """
import sys
from clipfleet.config import ClipModelSpec
from clipfleet.models.embedding_space import stamp
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
spec = ClipModelSpec(model="local-dir:" + sys.argv[1])
model = load_clip_model(spec, choose_device("cpu"), sys.argv[2] == "random")
print(stamp(model)["model_space"])
"""


def tiny_spec(folder, **runtime) -> ClipModelSpec:
    return ClipModelSpec(model=f"local-dir:{folder}", **runtime)


def space_in_a_new_process(folder, mode: str) -> str:
    """A restart: the model loaded and stamped in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", SPACE_OF, str(folder), mode],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_random_weights_replicas_agree_on_vectors_and_space(model_dir):
    """Two replicas of one random-weights variant build the same model (seeded per spec), so
    their vectors are interchangeable and their space is one; unseeded, they differed."""
    spec = tiny_spec(model_dir / "open_clip")
    first = ClipEncoder(spec, CPU, random_weights=True, replica_id="r-1")
    second = ClipEncoder(spec, CPU, random_weights=True, replica_id="r-2")
    texts = ["a photo of a cat", "a red dress"]
    np.testing.assert_array_equal(first.model.encode_texts(texts), second.model.encode_texts(texts))
    assert asyncio.run(first.space()) == asyncio.run(second.space())
    real = stamp(load_clip_model(spec, CPU, False))["model_space"]
    assert asyncio.run(first.space())["model_space"] != real  # random is not the file's weights


def test_random_resnets_agree_and_the_callers_rng_is_left_alone():
    spec = ResNetSpec(model="resnet18", weights="IMAGENET1K_V1")
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = ResNetModel(spec, CPU, random_weights=True)
    assert torch.equal(torch.rand(3), expected)  # seeded_init restored the global generator
    second = ResNetModel(spec, CPU, random_weights=True)
    assert weights_digest(first.weights_module()) == weights_digest(second.weights_module())
    with seeded_init({"model": "other"}, True):
        other = torch.rand(3)
    with seeded_init({"model": "other"}, True):
        assert torch.equal(torch.rand(3), other)


def test_space_is_the_same_after_a_restart(model_dir):
    folder = model_dir / "open_clip"
    for mode in ("file", "random"):
        here = stamp(load_clip_model(tiny_spec(folder), CPU, mode == "random"))["model_space"]
        assert space_in_a_new_process(folder, mode) == here, mode


def test_space_follows_the_weights_not_their_path(model_dir, tmp_path):
    base = stamp(load_clip_model(tiny_spec(model_dir / "open_clip"), CPU, False))
    copy = shutil.copytree(model_dir / "open_clip", tmp_path / "copy")
    assert stamp(load_clip_model(tiny_spec(copy), CPU, False)) == base
    retrained = make_open_clip_dir(tmp_path / "retrained", seed=1)
    assert (
        stamp(load_clip_model(tiny_spec(retrained), CPU, False))["model_space"]
        != (base["model_space"])
    )


def test_space_changes_with_runtime_and_precision(model_dir, tmp_path):
    folder = model_dir / "open_clip"
    spaces = {}
    for name, runtime in {
        "torch": {},
        "onnx": {"runtime": "onnx"},
        "int8": {"runtime": "onnx", "precision": "int8", "int8_min_cosine": 0.5},
        "bf16": {"precision": "bf16"},
    }.items():
        spec = tiny_spec(folder, **runtime)
        model = apply_runtime(load_clip_model(spec, CPU, False), spec, tmp_path)
        spaces[name] = stamp(model)["model_space"]
        assert model.info.extra["space_recipe"]["runtime"] == (runtime.get("runtime", "torch"))
    assert len(set(spaces.values())) == 4, spaces


def test_served_space_folds_in_how_images_reach_the_model():
    model_space = "es-0123456789abcdef"
    default = embedding_space(model_space, FetchLimits())
    assert embedding_space(model_space, FetchLimits(timeout_s=3, max_bytes=4096)) == default
    assert embedding_space(model_space, FetchLimits(ship_shortest_side=224)) != default
    assert embedding_space(model_space, FetchLimits(gpu_decode=True)) != default
    assert embedding_space(model_space, FetchLimits(gpu_decode=True), gpu_decode=False) == default
    assert embedding_space("es-fedcba9876543210", FetchLimits()) != default


def test_served_space_changes_with_the_decode_path(monkeypatch):
    # issue 22 decoded images at the model's square: vectors moved (cosine >= 0.99), so did the id
    import clipfleet.models.embedding_space as spaces

    model_space = "es-0123456789abcdef"
    current = embedding_space(model_space, FetchLimits())
    monkeypatch.setattr(spaces, "DECODE_PATH", spaces.DECODE_PATH - 1)
    assert embedding_space(model_space, FetchLimits()) != current


def test_the_int8_range_is_cached_by_model_space(model_dir, tmp_path, monkeypatch):
    import clipfleet.models.embedding_space as spaces

    monkeypatch.setenv(spaces.CALIBRATION_CACHE_ENV, str(tmp_path))
    calls = []
    real = spaces.calibration_limit
    monkeypatch.setattr(spaces, "calibration_limit", lambda m: calls.append(1) or real(m))
    first = stamp(load_clip_model(tiny_spec(model_dir / "open_clip"), CPU, False))
    again = stamp(load_clip_model(tiny_spec(model_dir / "open_clip"), CPU, False))
    assert again == first and len(calls) == 1  # the second load read it
    assert (tmp_path / f"{first['model_space']}.json").exists()
    monkeypatch.setenv(spaces.CALIBRATION_CACHE_ENV, "off")
    stamp(load_clip_model(tiny_spec(model_dir / "open_clip"), CPU, False))
    assert len(calls) == 2

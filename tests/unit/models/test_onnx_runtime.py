"""runtime: onnx — fidelity to torch, the on-disk cache, int8's calibration gate, validation."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pydantic import ValidationError

from clipfleet.config import AppArgs, ClipModelSpec, ResNetSpec
from clipfleet.models import onnx_runtime
from clipfleet.models.base import ModelLoadError
from clipfleet.models.calibration import CALIBRATION_PROMPTS, calibration_images
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.resnet import ResNetModel
from tests.support.fidelity import MIN_COSINE, mixed_images

CPU = choose_device("cpu")


def clip_pair(model_dir, **runtime):
    spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}", **runtime)
    return load_clip_model(spec, CPU, False), load_clip_model(spec, CPU, False), spec


def hf_clip_pair(model_dir, **runtime):
    spec = ClipModelSpec(backend="transformers", model=str(model_dir / "hf_clip"), **runtime)
    return load_clip_model(spec, CPU, False), load_clip_model(spec, CPU, False), spec


def resnet_pair(model_dir, **runtime):
    spec = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"), **runtime)
    return ResNetModel(spec, CPU, False), ResNetModel(spec, CPU, False), spec


def min_cosine(first: np.ndarray, second: np.ndarray) -> float:
    assert first.shape == second.shape
    return float(np.sum(first * second, axis=1).min())


@pytest.mark.parametrize("pair", [clip_pair, hf_clip_pair, resnet_pair])
@pytest.mark.parametrize("count", [1, 4])
def test_fp32_onnx_matches_torch(model_dir, tmp_path, pair, count):
    torch_model, onnx_model, spec = pair(model_dir, runtime="onnx")
    apply_runtime(onnx_model, spec, tmp_path)
    images = [np.asarray(image) for image in mixed_images()[:count]]
    assert onnx_model.info.as_dict()["runtime"] == "onnx"
    assert onnx_model.info.extra["onnx_providers"] == ["CPUExecutionProvider"]
    assert min_cosine(onnx_model.embed_images(images), torch_model.embed_images(images)) >= (
        MIN_COSINE
    )


@pytest.mark.parametrize("pair", [clip_pair, hf_clip_pair])
def test_text_tower_stays_on_torch(model_dir, tmp_path, pair):
    torch_model, onnx_model, spec = pair(model_dir, runtime="onnx")
    apply_runtime(onnx_model, spec, tmp_path)
    texts = list(CALIBRATION_PROMPTS[:5])
    np.testing.assert_array_equal(onnx_model.encode_texts(texts), torch_model.encode_texts(texts))


@pytest.mark.parametrize("pair", [clip_pair, hf_clip_pair])
def test_export_is_cached_by_weights_and_reused(model_dir, tmp_path, monkeypatch, pair):
    _, first, spec = pair(model_dir, runtime="onnx")
    apply_runtime(first, spec, tmp_path)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".onnx")  # no temporary file left behind
    assert first.info.extra["onnx_file"] == str(tmp_path / files[0])
    exports = []
    monkeypatch.setattr(onnx_runtime, "export_tower", lambda *args: exports.append(args))
    _, second, _ = pair(model_dir, runtime="onnx")
    apply_runtime(second, spec, tmp_path)
    assert exports == [] and second.info.extra["onnx_file"] == first.info.extra["onnx_file"]


def test_different_weights_get_a_different_file(model_dir, tmp_path):
    from tests.support.tiny_models import make_open_clip_dir

    other_dir = make_open_clip_dir(tmp_path / "other", seed=1)
    _, first, spec = clip_pair(model_dir, runtime="onnx")
    apply_runtime(first, spec, tmp_path / "cache")
    other_spec = ClipModelSpec(model=f"local-dir:{other_dir}", runtime="onnx")
    other = apply_runtime(load_clip_model(other_spec, CPU, False), other_spec, tmp_path / "cache")
    assert other.info.extra["onnx_file"] != first.info.extra["onnx_file"]


def test_random_weights_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(tmp_path))
    spec = ResNetSpec(model="resnet18", weights="IMAGENET1K_V1", runtime="onnx")
    model = apply_runtime(ResNetModel(spec, CPU, random_weights=True), spec)
    assert model.info.extra["onnx_file"] is None and not any(tmp_path.iterdir())
    assert model.embed_images([np.zeros((40, 50, 3), np.uint8)]).shape == (1, 512)


@pytest.mark.parametrize("pair", [clip_pair, hf_clip_pair])
def test_int8_reports_its_calibration_cosine(model_dir, tmp_path, pair):
    torch_model, int8_model, spec = pair(model_dir, runtime="onnx", precision="int8")
    apply_runtime(int8_model, spec, tmp_path)
    report = int8_model.info.as_dict()["int8_cosine_vs_fp32"]
    assert report["images"] == len(calibration_images()) >= 32
    assert spec.int8_min_cosine == 0.99 and report["min"] >= 0.99 and report["floor"] == 0.99
    assert int8_model.info.extra["precision"] == "int8"
    images = [np.asarray(image) for image in mixed_images()]
    assert min_cosine(int8_model.embed_images(images), torch_model.embed_images(images)) > 0.9


def test_int8_below_its_floor_refuses_to_start(model_dir, tmp_path):
    _, int8_model, _ = clip_pair(model_dir)
    spec = ClipModelSpec(
        model="unused", runtime="onnx", precision="int8", int8_min_cosine=1.0
    )  # exact equality with fp32: int8 can't reach it
    with pytest.raises(ModelLoadError, match="int8_min_cosine"):
        apply_runtime(int8_model, spec, tmp_path)


@pytest.mark.parametrize("pair", [clip_pair, hf_clip_pair, resnet_pair])
def test_bf16_is_gated_on_the_calibration_set(model_dir, pair):
    torch_model, bf16_model, spec = pair(model_dir, precision="bf16")
    apply_runtime(bf16_model, spec)
    report = bf16_model.info.as_dict()["bf16_cosine_vs_fp32"]
    assert report["images"] == len(calibration_images()) and report["floor"] == 0.999
    assert report["min"] >= 0.999 and bf16_model.info.extra["precision"] == "bf16"
    images = [np.asarray(image) for image in mixed_images()]
    found = bf16_model.embed_images(images)
    assert found.dtype == np.float32
    assert 0.999 <= min_cosine(found, torch_model.embed_images(images)) < 1.0  # bf16 ran


def test_bf16_below_its_floor_refuses_to_start(model_dir):
    _, bf16_model, _ = clip_pair(model_dir)
    spec = ClipModelSpec(model="unused", precision="bf16", bf16_min_cosine=1.0)
    with pytest.raises(ModelLoadError, match="bf16_min_cosine"):
        apply_runtime(bf16_model, spec)


def test_bf16_on_cuda_is_refused(model_dir):
    model, _, _ = resnet_pair(model_dir)
    model.plan = choose_device("cuda", cuda_available=True)
    with pytest.raises(ModelLoadError, match="CPU autocast"):
        apply_runtime(model, ResNetSpec(precision="bf16"))


def test_calibration_set_is_fixed_and_varied():
    first, second = calibration_images(), calibration_images()
    assert len(first) >= 32 and len(CALIBRATION_PROMPTS) >= 32
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(image.dtype == np.uint8 and image.shape[2] == 3 for image in first)
    assert len({image.shape for image in first}) > 16  # sizes vary
    assert len({round(float(image.std())) for image in first}) > 16  # so does content


def test_torch_runtime_is_recorded(model_dir):
    model, _, spec = resnet_pair(model_dir)
    assert apply_runtime(model, spec).info.as_dict()["runtime"] == "torch"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": "m", "precision": "int8"}, "needs runtime onnx"),
        ({"model": "m", "runtime": "tensorflow"}, "runtime"),
        ({"model": "m", "runtime": "onnx", "precision": "int4"}, "precision"),
        ({"model": "m", "runtime": "onnx", "int8_min_cosine": 1.5}, "int8_min_cosine"),
        ({"model": "m", "runtime": "onnx", "precision": "bf16"}, "needs runtime torch"),
        ({"model": "m", "precision": "bf16", "bf16_min_cosine": 0}, "bf16_min_cosine"),
    ],
)
def test_validation_rejects_what_no_backend_runs(spec, message):
    with pytest.raises(ValidationError, match=message):
        ClipModelSpec(**spec)


def test_hf_image_tower_is_get_image_features(model_dir, tmp_path):
    """What runtime=onnx exports for backend transformers: CLIP's vision tower and projection,
    SigLIP's pooled vision output, each equal to the model's own get_image_features."""
    import torch

    from clipfleet.models.hf_clip_backend import HfImageTower
    from tests.support.tiny_models import make_hf_siglip_dir

    siglip = ClipModelSpec(backend="transformers", model=str(make_hf_siglip_dir(tmp_path / "s")))
    for spec in (hf_clip_pair(model_dir)[2], siglip):
        model = load_clip_model(spec, CPU, False)
        pixels = torch.stack([model.preprocess_image(image) for image in calibration_images(3)])
        tower = model.image_tower()
        assert isinstance(tower, HfImageTower)
        assert not any(name.startswith("text") for name in tower.state_dict())
        with torch.inference_mode():
            torch.testing.assert_close(tower(pixels), model._image_features(pixels))


def test_siglip2_is_refused_on_onnx(tmp_path):
    from tests.support.tiny_models import make_hf_siglip_dir

    folder = make_hf_siglip_dir(tmp_path / "s2", version=2)
    spec = ClipModelSpec(backend="transformers", model=str(folder), runtime="onnx")
    with pytest.raises(ModelLoadError, match="SigLIP 2"):
        apply_runtime(load_clip_model(spec, CPU, False), spec, tmp_path / "cache")


def test_resnet_int8_needs_onnx_too():
    with pytest.raises(ValidationError, match="needs runtime onnx"):
        ResNetSpec(precision="int8")


def test_int8_on_cuda_is_refused(model_dir, tmp_path):
    model, _, _ = resnet_pair(model_dir)
    model.plan = choose_device("cuda", cuda_available=True)
    spec = ResNetSpec(runtime="onnx", precision="int8")
    with pytest.raises(ModelLoadError, match="CPU only"):
        apply_runtime(model, spec, tmp_path)


def test_app_args_accept_runtime_keys():
    args = AppArgs(
        profiles={
            "fast-int8": {
                "clip": {
                    "model": "ViT-B-32",
                    "pretrained": "x",
                    "runtime": "onnx",
                    "precision": "int8",
                },
                "resnet": {"model": "resnet18", "runtime": "onnx"},
            }
        },
        default_profile="fast-int8",
    )
    assert args.profiles["fast-int8"].clip.precision == "int8"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(tmp_path))
    assert onnx_runtime.cache_dir() == tmp_path
    monkeypatch.delenv(onnx_runtime.CACHE_ENV)
    assert str(onnx_runtime.cache_dir()).startswith(os.path.expanduser("~"))


def test_the_fast_int8_overlay_config_is_valid():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from clipfleet.config import clip_deployment_name, resnet_deployment_name

    path = Path(__file__).resolve().parents[3] / "serve_config.fast-int8.yaml"
    config = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    args = AppArgs(**app["args"])
    profile = args.profiles[args.default_profile]
    assert (profile.clip.runtime, profile.clip.precision) == ("onnx", "int8")
    names = {"Ingress", "ImageFetcher", "Scorer", resnet_deployment_name(profile.resnet)}
    names.add(clip_deployment_name(args.default_profile))
    assert {deployment["name"] for deployment in app["deployments"]} == names


def test_make_weights_exports_onnx_models_ahead_of_time(model_dir, tmp_path, monkeypatch):
    import yaml

    from clipfleet.tools.weights import fetch_all

    cache = tmp_path / "onnx"
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(cache))
    profile = {
        "clip": {"model": f"local-dir:{model_dir / 'open_clip'}", "runtime": "onnx"},
        "resnet": {
            "model": "resnet18",
            "weights": str(model_dir / "resnet18.pt"),
            "runtime": "onnx",
        },
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"applications": [{"args": {"profiles": {"fast": profile}}}]}))
    assert fetch_all(config) == 0
    assert len(list(cache.glob("*.onnx"))) == 2

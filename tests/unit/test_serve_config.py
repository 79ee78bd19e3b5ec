"""serve_config.yaml is valid for Ray and for AppArgs, and names only deployments that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from clipfleet.config import (
    AppArgs,
    EncoderConfig,
    clip_deployment_name,
    resnet_deployment_name,
)
from clipfleet.traffic import TrafficConfig

ROOT = Path(__file__).resolve().parents[2]
FIXED_DEPLOYMENTS = {"Ingress", "ImageFetcher", "Scorer"}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def deployment_names(args: AppArgs) -> set[str]:
    names = set(FIXED_DEPLOYMENTS)
    for profile, spec in args.profiles.items():
        names |= {clip_deployment_name(profile, variant) for variant in spec.variants}
        names.add(resnet_deployment_name(spec.resnet))
    return names


def test_serve_config_validates_against_ray_and_app_args():
    config = load("serve_config.yaml")
    ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        assert app["import_path"] == "pipelines.app:build_app"
        args = AppArgs(**app["args"])
        assert {"fast", "accurate"} <= set(args.profiles)
        configured = {deployment["name"] for deployment in app["deployments"]}
        assert configured <= deployment_names(args), configured - deployment_names(args)


def test_real_default_models():
    args = AppArgs(**load("serve_config.yaml")["applications"][0]["args"])
    fast, accurate = args.profiles["fast"], args.profiles["accurate"]
    assert (fast.clip.model, fast.clip.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert fast.variants["canary"].pretrained == "datacomp_xl_s13b_b90k"
    assert (accurate.clip.model, accurate.clip.pretrained) == ("ViT-L-14", "openai")
    assert fast.resnet.model == accurate.resnet.model == "resnet50"


def test_user_configs_are_valid():
    app = load("serve_config.yaml")["applications"][0]
    args = AppArgs(**app["args"])
    for deployment in app["deployments"]:
        if deployment["name"] == "Ingress":
            traffic = TrafficConfig(**deployment["user_config"])
            traffic.check_against({name: set(p.variants) for name, p in args.profiles.items()})
            assert traffic.weights["fast"] == {"stable": 90, "canary": 10}
        elif "user_config" in deployment:
            EncoderConfig(**deployment["user_config"])
            autoscaling = deployment["autoscaling_config"]
            # encoders must admit at least one full batch per replica
            assert deployment["max_ongoing_requests"] >= deployment["user_config"]["max_batch_size"]
            assert autoscaling["max_replicas"] >= autoscaling["min_replicas"]


def test_a_typo_in_args_is_rejected():
    args = dict(load("serve_config.yaml")["applications"][0]["args"])
    args["batchng"] = {}
    with pytest.raises(ValueError, match="batchng"):
        AppArgs(**args)


@pytest.mark.parametrize("name", ["serve_config.yaml", "cluster/serve_config.gpu.yaml"])
def test_every_deployment_sheds_load(name):
    for deployment in load(name)["applications"][0]["deployments"]:
        assert deployment["max_queued_requests"] >= 1, deployment["name"]
        assert deployment["backpressure_config"]["retry_after_s"] >= 1, deployment["name"]


@pytest.mark.parametrize("name", ["loadtests/bench_config.yaml", "loadtests/bench_config.gpu.yaml"])
def test_benchmark_configs_are_valid(name):
    config = load(name)
    ServeDeploySchema.model_validate(config)
    AppArgs(**config["applications"][0]["args"])
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"].startswith(("clip_", "resnet_")) and "user_config" in deployment:
            EncoderConfig(**deployment["user_config"])

"""Every Serve config the repo deploys is valid for Ray and for AppArgs, names only deployments
that exist, and gives the app the same effective values the hand-written files gave."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from clipfleet.config import (
    FIXED_DEPLOYMENTS,
    AppArgs,
    EncoderConfig,
    MultiplexedProfileSpec,
    deployment_names,
)
from clipfleet.rollout.traffic import TrafficConfig
from tests.support.serve_configs import deployed_configs, effective, snapshot

ROOT = Path(__file__).resolve().parents[3]
DEPLOYED = tuple(deployed_configs())


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_serve_config_validates_against_ray_and_app_args():
    config = load("serve_config.yaml")
    ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        assert app["import_path"] == "pipelines.app:build_app"
        args = AppArgs(**app["args"])
        assert {"fast", "accurate"} <= set(args.profiles)
        configured = {deployment["name"] for deployment in app["deployments"]}
        assert configured <= deployment_names(args), configured - deployment_names(args)


@pytest.mark.parametrize("name", DEPLOYED)
def test_deployed_config_validates(name):
    config = deployed_configs()[name]
    ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        assert app["import_path"] == "pipelines.app:build_app"
        args = AppArgs(**app["args"])
        for deployment in app.get("deployments", []):
            if deployment["name"] == "Ingress" and "user_config" in deployment:
                TrafficConfig(**deployment["user_config"]).check_against(
                    {profile: set(spec.variants) for profile, spec in args.profiles.items()}
                )
            elif "user_config" in deployment:
                EncoderConfig(**deployment["user_config"])


@pytest.mark.parametrize("name", DEPLOYED)
def test_configured_deployments_exist_in_the_graph(name):
    for app in deployed_configs()[name]["applications"]:
        expected = deployment_names(AppArgs(**app["args"]))
        assert expected >= set(FIXED_DEPLOYMENTS)
        configured = [deployment["name"] for deployment in app.get("deployments", [])]
        assert len(configured) == len(set(configured)), f"{name}: a deployment is listed twice"
        unknown = set(configured) - expected
        assert not unknown, f"{name}: {sorted(unknown)} are not in the graph {sorted(expected)}"


def test_deployment_names_are_the_real_graph():
    """clipfleet.config.deployment_names agrees with what pipelines.app.build_app binds."""
    build = pytest.importorskip("ray.serve._private.build_app").build_app
    from pipelines.app import build_app

    custom = MultiplexedProfileSpec(checkpoint_dir="/models/custom")
    for name in ("serve_config.yaml", "cluster/serve_config.gpu.yaml"):
        for app in load(name)["applications"]:
            args = AppArgs(**app["args"], multiplexed={"custom": custom})
            built = build(build_app(args), name=app["name"])
            assert {deployment.name for deployment in built.deployments} == deployment_names(args)
            assert "clip_custom_multiplexed" in deployment_names(args)


@pytest.mark.parametrize("name", DEPLOYED)
def test_effective_values_are_those_of_the_hand_written_configs(name):
    """YAML over the code's defaults gives every deployment what the old full files gave it."""
    assert effective(deployed_configs()[name]) == snapshot()[name]


def test_real_default_models():
    args = AppArgs(**load("serve_config.yaml")["applications"][0]["args"])
    fast, accurate = args.profiles["fast"], args.profiles["accurate"]
    assert (fast.clip.model, fast.clip.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert fast.variants["canary"].pretrained == "datacomp_xl_s13b_b90k"
    assert (accurate.clip.model, accurate.clip.pretrained) == ("ViT-L-14", "openai")
    assert fast.resnet.model == accurate.resnet.model == "resnet50"


@pytest.mark.parametrize("name", ["serve_config.yaml", "cluster/serve_config.gpu.yaml"])
def test_user_configs_are_valid(name):
    config = load(name)
    app = config["applications"][0]
    args = AppArgs(**app["args"])
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    traffic = TrafficConfig(**ingress["user_config"])
    traffic.check_against({name: set(p.variants) for name, p in args.profiles.items()})
    assert traffic.weights["fast"] == {"stable": 90, "canary": 10}
    for encoder, options in effective(config)["applications"]["clipfleet"]["deployments"].items():
        if encoder in FIXED_DEPLOYMENTS:
            continue
        batch = EncoderConfig(**options["user_config"]).max_batch_size
        # encoders must admit at least one full batch per replica
        assert options["max_ongoing_requests"] >= batch, encoder
        autoscaling = options["autoscaling_config"]
        assert autoscaling["max_replicas"] >= autoscaling["min_replicas"], encoder


def test_a_typo_in_args_is_rejected():
    args = dict(load("serve_config.yaml")["applications"][0]["args"])
    args["batchng"] = {}
    with pytest.raises(ValueError, match="batchng"):
        AppArgs(**args)


def test_args_batching_says_where_batching_moved():
    args = dict(load("serve_config.yaml")["applications"][0]["args"])
    args["batching"] = {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}
    with pytest.raises(ValueError, match=r"args\.batching is gone.*user_config") as caught:
        AppArgs(**args)
    assert "Extra inputs" not in str(caught.value)


@pytest.mark.parametrize("name", ["serve_config.yaml", "cluster/serve_config.gpu.yaml"])
def test_every_deployment_sheds_load(name):
    for deployment in load(name)["applications"][0]["deployments"]:
        assert deployment["max_queued_requests"] >= 1, deployment["name"]
        assert deployment["backpressure_config"]["retry_after_s"] >= 1, deployment["name"]


@pytest.mark.parametrize(
    "name",
    [
        "loadtests/bench_config.yaml",
        "loadtests/bench_config.gpu.yaml",
        "loadtests/bench_config.peers.yaml",
        "loadtests/bench_config.peers-onnx.yaml",
        "loadtests/bench_config.peers-bf16.yaml",
    ],
)
def test_benchmark_configs_are_valid(name):
    config = load(name)
    ServeDeploySchema.model_validate(config)
    AppArgs(**config["applications"][0]["args"])
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"].startswith(("clip_", "resnet_")) and "user_config" in deployment:
            EncoderConfig(**deployment["user_config"])


def test_gpu_config_serves_the_same_application_as_the_cpu_config():
    cpu = load("serve_config.yaml")["applications"]
    gpu = load("cluster/serve_config.gpu.yaml")["applications"]
    assert [app["name"] for app in gpu] == [app["name"] for app in cpu]
    for cpu_app, gpu_app in zip(cpu, gpu, strict=True):
        for key in ("route_prefix", "import_path", "logging_config"):
            assert gpu_app[key] == cpu_app[key], key
        # same models, limits, auth and fetch policy; only resources and batches are resized
        assert AppArgs(**gpu_app["args"]) == AppArgs(**cpu_app["args"])
        cpu_traffic, gpu_traffic = (
            next((d.get("user_config") for d in app["deployments"] if d["name"] == "Ingress"), None)
            for app in (cpu_app, gpu_app)
        )
        assert gpu_traffic == cpu_traffic, "the Ingress traffic split must be the same on GPU"

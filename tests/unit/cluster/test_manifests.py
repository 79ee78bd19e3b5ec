"""cluster/: the RayServices can place every deployment their serveConfigV2 asks for, load
models from a shared cache, and run the image and Ray version pyproject.toml pins.

CRD schema validation is in test_cluster_crds.py, secure defaults in test_cluster_security.py,
and that serveConfigV2 is what `make cluster-sync` generates in test_configgen.py.
"""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from clipfleet.config import FIXED_DEPLOYMENTS, AppArgs, deployment_names
from tests.support.manifests import (
    CLUSTER,
    EMBEDS,
    ROOT,
    documents,
    embedded_serve_config,
    gpus_of,
    pins,
    ray_start_resources,
    rayservice,
)

CLUSTER_HOST = "0.0.0.0"
LOCAL_HOST = "127.0.0.1"
GPU_SERVE_CONFIGS = ("serve_config.gpu.yaml", "rayservice.gpu.yaml")
ENCODER_RESOURCE = "encoder_node"
PINNED = ("ray", "torch", "torchvision")


def cluster_serve_configs() -> dict[str, dict]:
    """Every Serve config deployed on a cluster: the GPU file and the embedded copies."""
    configs = {
        "serve_config.gpu.yaml": yaml.safe_load((CLUSTER / "serve_config.gpu.yaml").read_text())
    }
    for manifest in EMBEDS:
        configs[manifest] = embedded_serve_config(manifest)
    return configs


def test_local_config_binds_loopback_and_cluster_configs_do_not():
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert local["http_options"]["host"] == LOCAL_HOST
    for name, config in cluster_serve_configs().items():
        assert config["http_options"]["host"] == CLUSTER_HOST, f"{name}: the proxy must listen"


def dockerfile_instructions() -> list[str]:
    """Instructions with continuation lines joined; comments dropped."""
    lines = [
        line
        for line in (CLUSTER / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    return [
        part.strip() for part in "\n".join(lines).replace("\\\n", " ").splitlines() if part.strip()
    ]


def test_dockerfile_pins_match_pyproject():
    project = pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    constraints = pins((ROOT / "constraints.txt").read_text().splitlines())
    instructions = dockerfile_instructions()
    installs = [line for line in instructions if line.startswith("RUN") and "pip install" in line]
    assert len(installs) == 1, installs
    image = pins(re.findall(r"\"[^\"]+\"|'[^']+'|\S+", installs[0]))
    assert "-c constraints.txt" in installs[0], "install with the lock file"
    for package in PINNED:
        assert image.get(package) == project[package], f"Dockerfile {package} != pyproject.toml"
        assert constraints[package] == project[package], f"constraints.txt {package} drifted"
    base = next(line for line in instructions if line.startswith("ARG BASE_TAG="))
    assert base.split("=", 1)[1].startswith(f"{project['ray']}-py311"), base
    assert any(line.startswith("FROM rayproject/ray:") for line in instructions)
    copied = " ".join(line for line in instructions if line.startswith("COPY"))
    for needed in ("pyproject.toml", "constraints.txt", "clipfleet", "deployments", "pipelines"):
        assert needed in copied, f"the image must COPY {needed}"


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_ray_version_matches_pyproject(manifest):
    project = pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert rayservice(manifest)["spec"]["rayClusterConfig"]["rayVersion"] == project["ray"]


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_every_deployment_fits_some_worker_group(manifest):
    cluster = rayservice(manifest)["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = cluster["workerGroupSpecs"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no replicas on the head"
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]
    assert any(gpus_of(group) == 1 for group in groups), "a one-GPU worker group"
    for app in embedded_serve_config(manifest)["applications"]:
        for deployment in app["deployments"]:
            options = deployment.get("ray_actor_options", {})
            wanted = options.get("resources", {})
            fits = [
                group["groupName"]
                for group in groups
                if (options.get("num_gpus", 0) == 0 or gpus_of(group) > 0)
                and all(
                    ray_start_resources(group).get(key, 0) >= value for key, value in wanted.items()
                )
            ]
            assert fits, f"{manifest}: no worker group can host {deployment['name']} ({options})"


@pytest.mark.parametrize("name", GPU_SERVE_CONFIGS)
def test_gpu_encoders_share_one_gpu(name):
    for app in cluster_serve_configs()[name]["applications"]:
        encoders = deployment_names(AppArgs(**app["args"])) - set(FIXED_DEPLOYMENTS)
        options = {d["name"]: d.get("ray_actor_options", {}) for d in app["deployments"]}
        assert encoders <= set(options), (
            f"every encoder needs GPU options: {encoders - set(options)}"
        )
        fractions = {encoder: options[encoder].get("num_gpus", 0) for encoder in encoders}
        assert all(0 < fraction < 1 for fraction in fractions.values()), fractions
        assert sum(fractions.values()) <= 1 + 1e-9, (
            f"one replica of each must fit a GPU: {fractions}"
        )
        for encoder in encoders:
            assert options[encoder].get("resources", {}).get(ENCODER_RESOURCE), encoder
        for fixed in FIXED_DEPLOYMENTS:
            assert not options.get(fixed, {}).get("num_gpus"), f"{fixed} must not hold a GPU"


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_model_cache_volume_is_mounted_where_models_load(manifest):
    docs = documents(CLUSTER / manifest)
    claims = {doc["metadata"]["name"] for doc in docs if doc.get("kind") == "PersistentVolumeClaim"}
    for group in rayservice(manifest)["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/home/ray/.cache" in mounts, f"{group['groupName']}: no model cache mount"
            volume = volumes[mounts["/home/ray/.cache"]]
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            assert claim is None or claim in claims, f"PVC {claim} is not defined in {manifest}"
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert env.get("HF_HOME", "").startswith("/home/ray/.cache"), group["groupName"]
            assert env.get("TORCH_HOME", "").startswith("/home/ray/.cache"), group["groupName"]
            assert "readinessProbe" not in container and "livenessProbe" not in container, (
                "KubeRay injects its own probes into Ray containers"
            )

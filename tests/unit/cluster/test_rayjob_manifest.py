"""cluster/rayjob.yaml: a valid KubeRay RayJob (test_cluster_crds.py checks every manifest's CRD
schema) whose entrypoint is a real `clipfleet batch` command over a config the
image holds, on the RayService's image and Ray version, with somewhere to put the actors."""

from __future__ import annotations

import shlex
import tomllib

import yaml

from clipfleet.batch.settings import deployment_entry, load_application, size_actors
from clipfleet.config import AppArgs, clip_deployment_name
from clipfleet.tools.cli import build_parser
from tests.support.manifests import (
    CLUSTER,
    ROOT,
    documents,
    gpus_of,
    pins,
    ray_start_resources,
    rayservice,
    schema_errors,
)

MANIFEST = CLUSTER / "rayjob.yaml"


def rayjob() -> dict:
    jobs = [doc for doc in documents(MANIFEST) if doc.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def test_rayjob_validates_against_the_crd():
    assert not schema_errors(rayjob())
    broken = yaml.safe_load(yaml.safe_dump(rayjob()))
    broken["spec"]["entrypointNumCpu"] = 1  # a typo is rejected, not pruned
    assert schema_errors(broken)


def test_entrypoint_is_a_clipfleet_batch_command_over_a_config_in_the_image():
    argv = shlex.split(rayjob()["spec"]["entrypoint"])
    assert argv[:2] == ["clipfleet", "batch"]
    args = build_parser().parse_args(argv[1:])
    assert args.batch_mode in ("embed", "score", "tag") and args.resume
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert str(args.config) in dockerfile, f"the image must COPY {args.config}"
    app = load_application(ROOT / args.config)
    app_args = AppArgs(**app["args"])
    assert (args.profile or app_args.default_profile) in app_args.profiles


def test_same_image_and_ray_version_as_the_rayservice():
    service = rayservice("rayservice.gpu.yaml")["spec"]["rayClusterConfig"]
    cluster = rayjob()["spec"]["rayClusterSpec"]
    project = pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert cluster["rayVersion"] == service["rayVersion"] == project["ray"]
    service_images = {
        c["image"]
        for group in [service["headGroupSpec"], *service["workerGroupSpecs"]]
        for c in group["template"]["spec"]["containers"]
    }
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert container["image"] in service_images


def test_a_gpu_group_fits_the_configured_model_actors():
    argv = shlex.split(rayjob()["spec"]["entrypoint"])
    args = build_parser().parse_args(argv[1:])
    app = load_application(ROOT / args.config)
    entry = deployment_entry(app, clip_deployment_name(args.profile or "fast"))
    groups = rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu_groups = [group for group in groups if gpus_of(group) >= 1]
    assert gpu_groups, "a GPU worker group"
    sizing = size_actors(entry, gpus_available=gpus_of(gpu_groups[0]), cpus_per_node=8)
    assert 0 < sizing.num_gpus < 1, "fractional GPUs from the serve config"
    per_pod = ray_start_resources(gpu_groups[0])
    assert per_pod.get("encoder_node", 0) >= 1 or not entry["ray_actor_options"].get("resources")

"""cluster/: KubeRay manifests valid against the CRDs, in step with the Serve configs and pins.

No Kubernetes cluster runs here, so the manifests are checked the way the API server would check
them: against the `openAPIV3Schema` of KubeRay's own CRDs (../shared/kuberay-crds), with unknown
fields rejected as `kubectl apply` does by default (strict field validation).
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from clipfleet.config import AppArgs, EncoderConfig
from clipfleet.traffic import TrafficConfig
from tests.unit.test_serve_config import FIXED_DEPLOYMENTS, deployment_names

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CRD_DIR = CLUSTER / "crds"  # vendored from KubeRay; see crds/SOURCE.md
CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
}
CLUSTER_HOST = "0.0.0.0"
LOCAL_HOST = "127.0.0.1"
# The one difference allowed between a RayService's serveConfigV2 and the Serve config it embeds:
# serve_config.yaml binds the proxy to loopback for local dev; in a pod it must listen on 0.0.0.0.
ALLOWED_DIFFERENCES = {("http_options", "host")}
# (RayService manifest, the Serve config file its serveConfigV2 must match)
EMBEDS = {
    "rayservice.yaml": ROOT / "serve_config.yaml",
    "rayservice.gpu.yaml": CLUSTER / "serve_config.gpu.yaml",
}
SERVE_CONFIGS = ("serve_config.yaml", "serve_config.gpu.yaml", *EMBEDS)
GPU_SERVE_CONFIGS = ("serve_config.gpu.yaml", "rayservice.gpu.yaml")
ENCODER_RESOURCE = "encoder_node"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_documents() -> list[tuple[str, int, dict]]:
    found = []
    for path in sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")]):
        for index, doc in enumerate(documents(path)):
            if isinstance(doc, dict) and doc.get("kind") in CRD_FILES:
                found.append((path.name, index, doc))
    return found


def rayservice(manifest: str) -> dict:
    services = [doc for doc in documents(CLUSTER / manifest) if doc.get("kind") == "RayService"]
    assert len(services) == 1, f"{manifest}: expected exactly one RayService"
    return services[0]


def embedded_serve_config(manifest: str) -> dict:
    return yaml.safe_load(rayservice(manifest)["spec"]["serveConfigV2"])


def all_serve_configs() -> dict[str, dict]:
    """Every Serve config that is deployed somewhere: the files and the embedded copies."""
    configs = {"serve_config.yaml": yaml.safe_load((ROOT / "serve_config.yaml").read_text())}
    configs["serve_config.gpu.yaml"] = yaml.safe_load(EMBEDS["rayservice.gpu.yaml"].read_text())
    for manifest in EMBEDS:
        configs[manifest] = embedded_serve_config(manifest)
    return configs


# --- (a) CRD schema validation -------------------------------------------------------------


def strict_schema(schema):
    """A CRD's openAPIV3Schema as plain JSON Schema, closed where Kubernetes is closed.

    - `x-kubernetes-*` extensions are dropped (jsonschema ignores unknown keywords anyway); the
      int-or-string fields already spell out `anyOf: [integer, string]`, and `format` (int32,
      quantity...) is not asserted, as jsonschema does by default.
    - An object with `properties` and no `additionalProperties` gets `additionalProperties:
      false` unless it is `x-kubernetes-preserve-unknown-fields`: the API server prunes unknown
      fields and kubectl's default strict validation rejects them, so a typo'd key is an error.
    - CEL rules (`x-kubernetes-validations`) are not evaluated.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = strict_schema(value)
        else:
            out[key] = value
    closed = "properties" in schema and "additionalProperties" not in schema
    if closed and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


_SCHEMAS: dict[tuple[str, str], dict] = {}


def crd_schema(kind: str, api_version: str) -> dict:
    group, _, version = api_version.partition("/")
    key = (kind, version)
    if key not in _SCHEMAS:
        crd = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())
        assert crd["spec"]["group"] == group, f"{kind} is in group {crd['spec']['group']}"
        versions = {entry["name"]: entry for entry in crd["spec"]["versions"]}
        assert version in versions, f"{kind} {api_version}: CRD serves only {sorted(versions)}"
        assert versions[version]["served"], f"{kind} {api_version} is not served"
        _SCHEMAS[key] = strict_schema(versions[version]["schema"]["openAPIV3Schema"])
    return _SCHEMAS[key]


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"], doc["apiVersion"]))
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def test_cluster_folder_has_the_expected_manifests():
    kinds = [(name, doc["kind"]) for name, _, doc in manifest_documents()]
    assert ("rayservice.yaml", "RayService") in kinds
    assert ("rayservice.gpu.yaml", "RayService") in kinds


@pytest.mark.parametrize(
    ("name", "index", "doc"),
    manifest_documents(),
    ids=[f"{name}#{index}" for name, index, _ in manifest_documents()],
)
def test_manifest_validates_against_kuberay_crd(name, index, doc):
    errors = schema_errors(doc)
    assert not errors, f"{name} document {index}:\n" + "\n".join(errors)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # a typo'd key is rejected, not silently pruned
        (lambda spec: spec["rayClusterConfig"].update(enableInTreeAutoscalng=True), "enableInTree"),
        # rayStartParams values must be strings ("0", not 0)
        (
            lambda spec: spec["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(
                {"num-cpus": 0}
            ),
            "is not of type 'string'",
        ),
        # worker groups need min/max replicas
        (lambda spec: spec["rayClusterConfig"]["workerGroupSpecs"][0].pop("maxReplicas"), "max"),
        (lambda spec: spec.update(serveConfigV2={"applications": []}), "is not of type 'string'"),
        # Ray token auth: only the modes KubeRay knows
        (lambda spec: spec["rayClusterConfig"]["authOptions"].update(mode="tokens"), "tokens"),
    ],
    ids=["typo", "int-param", "no-maxReplicas", "serve-config-not-string", "auth-mode"],
)
def test_crd_validation_catches_broken_manifests(mutate, expected):
    doc = copy.deepcopy(rayservice("rayservice.yaml"))
    assert not schema_errors(doc)
    mutate(doc["spec"])
    errors = schema_errors(doc)
    assert any(expected in error for error in errors), errors


# --- (b) serveConfigV2 is the Serve config, byte for byte after parsing --------------------


def differences(left, right, path=()) -> set[tuple]:
    if isinstance(left, dict) and isinstance(right, dict):
        found = set()
        for key in left.keys() | right.keys():
            if key not in left or key not in right:
                found.add((*path, key))
            else:
                found |= differences(left[key], right[key], (*path, key))
        return found
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        found = set()
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            found |= differences(a, b, (*path, index))
        return found
    return set() if left == right else {path}


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_serve_config_v2_matches_its_serve_config(manifest):
    source = yaml.safe_load(EMBEDS[manifest].read_text())
    embedded = embedded_serve_config(manifest)
    assert embedded["http_options"]["host"] == CLUSTER_HOST, "the proxy must listen in the pod"
    drift = differences(source, embedded) - ALLOWED_DIFFERENCES
    assert not drift, (
        f"{manifest} serveConfigV2 drifted from {EMBEDS[manifest].relative_to(ROOT)} at "
        f"{sorted('.'.join(map(str, path)) for path in drift)}: run `make cluster-sync`"
    )


def test_local_config_binds_loopback_and_cluster_configs_do_not():
    configs = all_serve_configs()
    assert configs["serve_config.yaml"]["http_options"]["host"] == LOCAL_HOST
    for name, config in configs.items():
        if name != "serve_config.yaml":
            assert config["http_options"]["host"] == CLUSTER_HOST, name


def test_drift_check_sees_a_changed_model():
    source = yaml.safe_load(EMBEDS["rayservice.yaml"].read_text())
    changed = copy.deepcopy(source)
    changed["applications"][0]["args"]["default_profile"] = "accurate"
    changed["http_options"]["host"] = CLUSTER_HOST
    assert differences(source, changed) == {
        ("http_options", "host"),
        ("applications", 0, "args", "default_profile"),
    }


def test_gpu_config_serves_the_same_application_as_the_cpu_config():
    cpu = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    gpu = yaml.safe_load(EMBEDS["rayservice.gpu.yaml"].read_text())["applications"]
    assert [app["name"] for app in gpu] == [app["name"] for app in cpu]
    for cpu_app, gpu_app in zip(cpu, gpu, strict=True):
        for key in ("route_prefix", "import_path", "logging_config"):
            assert gpu_app[key] == cpu_app[key], key
        cpu_args, gpu_args = AppArgs(**cpu_app["args"]), AppArgs(**gpu_app["args"])
        # same models, limits, auth and fetch policy; only batching (and resources) are resized
        resized = {"batching"}
        assert gpu_args.model_dump(exclude=resized) == cpu_args.model_dump(exclude=resized)
        cpu_traffic, gpu_traffic = (
            next((d.get("user_config") for d in app["deployments"] if d["name"] == "Ingress"), None)
            for app in (cpu_app, gpu_app)
        )
        assert gpu_traffic == cpu_traffic, "the Ingress traffic split must be the same on GPU"


# --- (c) the configs are valid for Ray Serve and for clipfleet -----------------------------


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_validates(name):
    config = all_serve_configs()[name]
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


# --- (d) the image pins what pyproject.toml pins --------------------------------------------

PINNED = ("ray", "torch", "torchvision")
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;\"']+)")


def pins(requirements) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = _PIN.match(requirement.strip().strip("\"'"))
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


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


# --- (e) configured deployments exist, and the cluster can place them -----------------------


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_configured_deployments_exist_in_the_graph(name):
    for app in all_serve_configs()[name]["applications"]:
        expected = deployment_names(AppArgs(**app["args"]))
        assert expected >= FIXED_DEPLOYMENTS
        configured = [deployment["name"] for deployment in app.get("deployments", [])]
        assert len(configured) == len(set(configured)), f"{name}: a deployment is listed twice"
        unknown = set(configured) - expected
        assert not unknown, f"{name}: {sorted(unknown)} are not in the graph {sorted(expected)}"


def test_expected_names_are_the_real_graph():
    """The name helpers above agree with what pipelines.app.build_app really binds."""
    build = pytest.importorskip("ray.serve._private.build_app").build_app
    from pipelines.app import build_app

    for name in ("serve_config.yaml", "serve_config.gpu.yaml"):
        for app in all_serve_configs()[name]["applications"]:
            args = AppArgs(**app["args"])
            built = build(build_app(args), name=app["name"])
            assert {deployment.name for deployment in built.deployments} == deployment_names(args)


def ray_start_resources(group: dict) -> dict[str, float]:
    """Custom resources a KubeRay group offers: the group `resources` field or rayStartParams."""
    offered = {key: float(value) for key, value in group.get("resources", {}).items()}
    raw = group.get("rayStartParams", {}).get("resources")
    if raw:
        offered.update(json.loads(raw.strip().strip('"').replace('\\"', '"')))
    return offered


def gpus_of(group: dict) -> int:
    containers = group["template"]["spec"]["containers"]
    return sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers
    )


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
    for app in all_serve_configs()[name]["applications"]:
        encoders = deployment_names(AppArgs(**app["args"])) - FIXED_DEPLOYMENTS
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

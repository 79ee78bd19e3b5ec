"""Reading cluster/'s KubeRay manifests, and checking them the way the API server would.

No Kubernetes cluster runs in the tests, so manifests are checked against the `openAPIV3Schema`
of KubeRay's own CRDs (vendored in cluster/crds, see SOURCE.md), with unknown fields rejected as
`kubectl apply` does by default (strict field validation).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CRD_DIR = CLUSTER / "crds"
CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
}
# The RayService manifests; clipfleet.tools.configgen writes their serveConfigV2.
EMBEDS = ("rayservice.gpu.yaml", "rayservice.yaml")


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


_PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;\"']+)")


def pins(requirements) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = _PIN.match(requirement.strip().strip("\"'"))
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


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

"""cluster/: secure defaults. API keys from a Secret, Ray token authentication, only the serve
port published, and a NetworkPolicy that admits only serve from outside the Ray pods.

Schema-checked only (no Kubernetes here): the RayServices against the vendored KubeRay CRDs in
test_cluster_crds.py; the NetworkPolicy against a hand-written subset of its Kubernetes
schema and by hand, with mutated policies showing that each check can fail.
"""

from __future__ import annotations

import copy

import jsonschema
import pytest

from clipfleet.config import AppArgs
from tests.support.manifests import (
    CLUSTER,
    EMBEDS,
    documents,
    embedded_serve_config,
    rayservice,
)

API_KEYS_SECRET = {"name": "clipfleet-api-keys", "key": "api-keys"}
POD_LABELS = {"app.kubernetes.io/name": "clipfleet"}
SERVE_PORT, DASHBOARD_PORT, CLIENT_PORT = 8000, 8265, 10001
OPERATOR_NAMESPACE = "kuberay"  # README installs the operator there


def pod_templates(manifest: str) -> dict[str, dict]:
    cluster = rayservice(manifest)["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]}
    groups |= {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    return {name: group["template"] for name, group in groups.items()}


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_ray_token_authentication_is_on(manifest):
    cluster = rayservice(manifest)["spec"]["rayClusterConfig"]
    assert cluster.get("authOptions", {}).get("mode") == "token"
    version = tuple(int(part) for part in cluster["rayVersion"].split("."))
    assert version >= (2, 52, 0), "Ray token authentication needs Ray 2.52 or later"


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_api_keys_come_from_a_secret_in_every_ray_container(manifest):
    for app in embedded_serve_config(manifest)["applications"]:
        variable = AppArgs(**app["args"]).auth.api_keys_env
    for group, template in pod_templates(manifest).items():
        for container in template["spec"]["containers"]:
            env = {item["name"]: item for item in container.get("env", [])}
            assert variable in env, f"{group}: no {variable}"
            assert "value" not in env[variable], f"{group}: API keys must not be inline"
            assert env[variable]["valueFrom"]["secretKeyRef"] == API_KEYS_SECRET, group


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_only_the_serve_port_is_published(manifest):
    spec = rayservice(manifest)["spec"]
    head = spec["rayClusterConfig"]["headGroupSpec"]
    assert head.get("serviceType") == "ClusterIP", "the head Service stays inside the cluster"
    assert not head.get("enableIngress"), "no Ingress to the head (dashboard)"
    assert spec.get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for group, template in pod_templates(manifest).items():
        assert not template["spec"].get("hostNetwork"), group
        for container in template["spec"]["containers"]:
            ports = container.get("ports", [])
            assert not any("hostPort" in port for port in ports), f"{group}: hostPort"
            assert CLIENT_PORT not in {port["containerPort"] for port in ports}, (
                f"{group}: the Ray client port is not published"
            )
    serve_port = embedded_serve_config(manifest)["http_options"]["port"]
    assert serve_port == SERVE_PORT


# NetworkPolicy (networking.k8s.io/v1): no Kubernetes core schema is vendored, so this is the
# part of its OpenAPI schema that the manifest uses, closed (unknown keys are errors).
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}
_PEER = {
    "type": "object",
    "properties": {
        "podSelector": _SELECTOR,
        "namespaceSelector": _SELECTOR,
        "ipBlock": {
            "type": "object",
            "properties": {"cidr": {"type": "string"}, "except": {"type": "array"}},
            "required": ["cidr"],
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
    "minProperties": 1,
}
_PORT = {
    "type": "object",
    "properties": {
        "port": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]
        },
        "endPort": {"type": "integer"},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
    },
    "additionalProperties": False,
}
_RULE = {
    "type": "object",
    "properties": {
        "from": {"type": "array", "items": _PEER},
        "to": {"type": "array", "items": _PEER},
        "ports": {"type": "array", "items": _PORT},
    },
    "additionalProperties": False,
}
NETWORK_POLICY_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "networking.k8s.io/v1"},
        "kind": {"const": "NetworkPolicy"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
            "additionalProperties": True,
        },
        "spec": {
            "type": "object",
            "required": ["podSelector"],
            "properties": {
                "podSelector": _SELECTOR,
                "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                "ingress": {"type": "array", "items": _RULE},
                "egress": {"type": "array", "items": _RULE},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def network_policy() -> dict:
    policies = [
        doc
        for doc in documents(CLUSTER / "networkpolicy.yaml")
        if doc.get("kind") == "NetworkPolicy"
    ]
    assert len(policies) == 1
    return policies[0]


def _matches(selector: dict, labels: dict) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels is checked here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def _ports(rule: dict) -> set | None:
    """The ports a rule admits (None: every port)."""
    return None if not rule.get("ports") else {port["port"] for port in rule["ports"]}


def network_policy_problems(policy: dict) -> list[str]:
    """What is wrong with the policy for clipfleet's Ray pods, by hand: admitted from anywhere
    only the serve port; Ray pods reach each other on every port; the operator reaches the
    dashboard; nothing else (no ipBlock, no other namespace or pod)."""
    validator = jsonschema.Draft7Validator(NETWORK_POLICY_SCHEMA)
    problems = [error.message for error in validator.iter_errors(policy)]
    if problems:
        return problems
    spec = policy["spec"]
    if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        problems.append("the policy must restrict ingress")
    if not _matches(spec["podSelector"], POD_LABELS) or not spec["podSelector"].get("matchLabels"):
        problems.append("the policy must select clipfleet's Ray pods (and only them)")
    ray_pods = operator = False
    for rule in spec.get("ingress", []):
        peers = rule.get("from")
        if not peers:  # from anywhere
            if _ports(rule) != {SERVE_PORT}:
                problems.append(f"only the serve port may be open to all, not {_ports(rule)}")
            continue
        for peer in peers:
            if "ipBlock" in peer:
                problems.append(f"no ipBlock peers ({peer['ipBlock']['cidr']})")
            elif "namespaceSelector" in peer:
                namespace = peer["namespaceSelector"].get("matchLabels", {})
                is_operator = (
                    namespace == {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}
                    and _matches(
                        peer.get("podSelector", {}), {"app.kubernetes.io/name": "kuberay-operator"}
                    )
                    and peer.get("podSelector", {}).get("matchLabels")
                )
                if not is_operator or _ports(rule) != {DASHBOARD_PORT}:
                    problems.append(f"another namespace is admitted: {peer} to {_ports(rule)}")
                operator = operator or bool(is_operator)
            elif _matches(peer["podSelector"], POD_LABELS) and peer["podSelector"].get(
                "matchLabels"
            ):
                ray_pods = ray_pods or _ports(rule) is None
            else:
                problems.append(f"other pods are admitted: {peer}")
    if not ray_pods:
        problems.append("Ray pods must reach each other on every port")
    if not operator:
        problems.append(f"the KubeRay operator must reach the dashboard ({DASHBOARD_PORT})")
    return problems


def test_network_policy_admits_serve_ray_and_the_operator_only():
    assert network_policy_problems(network_policy()) == []


@pytest.mark.parametrize("manifest", sorted(EMBEDS))
def test_network_policy_selects_every_ray_pod(manifest):
    selector = network_policy()["spec"]["podSelector"]
    for group, template in pod_templates(manifest).items():
        labels = template.get("metadata", {}).get("labels", {})
        assert _matches(selector, labels), f"{group} pods are not covered by the NetworkPolicy"
    dashboard = {
        port["containerPort"]
        for port in pod_templates(manifest)["head"]["spec"]["containers"][0]["ports"]
    }
    assert DASHBOARD_PORT in dashboard and SERVE_PORT in dashboard


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda spec: spec["ingress"][1]["ports"].append({"port": 8265}), "only the serve port"),
        (
            lambda spec: spec["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
            "ipBlock",
        ),
        (lambda spec: spec["ingress"].pop(0), "reach each other"),
        (lambda spec: spec["ingress"].pop(2), "operator"),
        (lambda spec: spec["ingress"][2]["from"][0].pop("podSelector"), "another namespace"),
        (lambda spec: spec.update(podSelector={}), "select clipfleet"),
        (lambda spec: spec.update(ingres=[]), "Additional properties"),
    ],
    ids=[
        "dashboard-open",
        "ipblock",
        "no-ray-traffic",
        "no-operator",
        "whole-namespace",
        "all-pods",
        "typo",
    ],
)
def test_network_policy_check_catches_open_policies(mutate, expected):
    policy = copy.deepcopy(network_policy())
    mutate(policy["spec"])
    problems = network_policy_problems(policy)
    assert any(expected in problem for problem in problems), problems

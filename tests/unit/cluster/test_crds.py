"""cluster/: every KubeRay manifest validates against the vendored CRDs (tests.support.manifests
explains how), and the validation really rejects broken manifests."""

from __future__ import annotations

import copy

import pytest

from tests.support.manifests import manifest_documents, rayservice, schema_errors


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

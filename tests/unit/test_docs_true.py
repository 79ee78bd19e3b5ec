"""The docs stay true: every route path and `make` target they name exists."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from clipfleet.api.app import create_app
from clipfleet.config import ApiLimits, AuthConfig, CorsConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), ROOT / "loadtests" / "RESULTS.md"])
# a code span holding a path, optionally after its method: `POST /v1/tag`, `/readyz?verbose=1`
DOC_PATH = re.compile(r"`(?:(?:GET|POST|PUT|PATCH|DELETE) )?(/[A-Za-z0-9_{}./:*-]*)")
MAKE_TARGET = re.compile(r"`make ([A-Za-z0-9_-]+)")


def served_paths() -> list[str]:
    settings = SimpleNamespace(
        args=SimpleNamespace(limits=ApiLimits(), auth=AuthConfig(), cors=CorsConfig())
    )
    app = create_app(settings)
    return [*app.openapi()["paths"], app.openapi_url, app.docs_url]


def is_served(path: str, served: list[str]) -> bool:
    """`/v1/tag`, `/v1/models/{id}`, `/v1/models/fast` match a route; `/v1/embed/*` and a bare
    `/v1` name a family of routes: some route must start with them."""
    if path.endswith("*") or path.count("/") == 1:
        return any(route.startswith(path.rstrip("*")) for route in served)
    patterns = [re.sub(r"\{[^}]+\}", "[^/]+", route) + "/?" for route in served]
    return any(re.fullmatch(pattern, path) for pattern in patterns)


def documented_paths() -> set[tuple[str, str]]:
    found = set()
    for doc in DOCS:
        for path in DOC_PATH.findall(doc.read_text()):
            found.add((doc.relative_to(ROOT).as_posix(), path.rstrip(".:")))
    return found


def test_every_route_the_docs_name_is_served():
    served = served_paths()
    served_roots = {route.split("/")[1] for route in served}
    # Only paths under one of the app's own first segments: the docs also quote peers' routes
    # (infinity's /embeddings) and files (/proc/self/environ).
    ours = {(doc, path) for doc, path in documented_paths() if path.split("/")[1] in served_roots}
    assert len(ours) > 20, "the pattern no longer finds the documented routes"
    missing = sorted((doc, path) for doc, path in ours if not is_served(path, served))
    assert not missing, f"routes the docs name but the app does not serve: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_make_target_the_docs_name_exists(doc):
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_-]+):", makefile, flags=re.MULTILINE))
    named = set(MAKE_TARGET.findall(doc.read_text()))
    assert not named - targets, f"{doc.name} names make targets that do not exist"

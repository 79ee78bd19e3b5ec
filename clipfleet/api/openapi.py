"""The OpenAPI document's component names, kept stable for clients' code generators.

pydantic names a model's component by its class name, or, where two models share one (the v1
`EmbeddingResponse` and seed 003's), by its module path, which a move of the code changes. The
models below keep the names clients generated code from (those of the tree before issue 25's
move); tests/unit/api/test_openapi.py pins every component name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from clipfleet.api.compat import local_embedder
from clipfleet.api.schemas import v1

STABLE_NAMES: dict[type[BaseModel], str] = {
    v1.EmbeddingResponse: "clipfleet__api__schemas__EmbeddingResponse",
    local_embedder.EmbeddingResponse: "clipfleet__api__compat__seed003__EmbeddingResponse",
}
REF_PREFIX = "#/components/schemas/"


def module_name(model: type[BaseModel]) -> str:
    """The component name pydantic gives a model whose class name is not unique."""
    return f"{model.__module__}.{model.__qualname__}".replace(".", "__")


def _renamed_refs(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith(REF_PREFIX) and ref.removeprefix(REF_PREFIX) in names:
            node["$ref"] = REF_PREFIX + names[ref.removeprefix(REF_PREFIX)]
        for value in node.values():
            _renamed_refs(value, names)
    elif isinstance(node, list):
        for value in node:
            _renamed_refs(value, names)
    return node


def stable_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """`app.openapi` with the stable component names (built once, like FastAPI's own)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.get("components", {}).get("schemas", {})
        names = {
            module_name(m): name for m, name in STABLE_NAMES.items() if module_name(m) in schemas
        }
        for old, new in names.items():
            schemas[new] = schemas.pop(old)
        app.openapi_schema = _renamed_refs(document, names)
        return app.openapi_schema

    return openapi

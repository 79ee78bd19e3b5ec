"""The code's layout stays as docs/architecture.md maps it (issue 25): clipfleet/'s top level
holds the shared vocabulary only, no module imports one that imports it back (lazy imports
count too), modules stay under 400 lines, only deployments/ and pipelines/ import Serve's
decorators, and no test module imports another (shared helpers live in tests/support/)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("clipfleet", "deployments", "pipelines")
MAX_TOP_LEVEL_MODULES = 6
MAX_LINES = 400
SERVE_DECORATORS = {"deployment", "batch", "ingress", "multiplexed"}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def modules(*packages: str) -> dict[str, Path]:
    return {module_name(p): p for package in packages for p in (ROOT / package).rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Every module an import statement in `path` names, wherever the statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    found = modules(*PACKAGES)
    return {
        name: {
            other
            for other in imported(path)
            if other in found and other != name and not name.startswith(other + ".")
        }
        for name, path in found.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while component[-1:] != [node]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_top_level_holds_only_the_shared_vocabulary():
    top = sorted(path.name for path in (ROOT / "clipfleet").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_is_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules(*PACKAGES).items()}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def serve_decorators(path: Path) -> set[str]:
    """The `serve.deployment` / `serve.batch` / `serve.ingress` / `serve.multiplexed` a module
    uses (as code, not in its text)."""
    return {
        node.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "serve"
        and node.attr in SERVE_DECORATORS
    }


def test_only_the_serve_shells_use_serve_decorators():
    """They belong in deployments/ and pipelines/; clipfleet/ holds plain classes (it may still
    ask Serve for its replica context)."""
    used = {name: serve_decorators(path) for name, path in modules("clipfleet").items()}
    assert {name: found for name, found in used.items() if found} == {}
    assert serve_decorators(ROOT / "deployments" / "_encoder.py") == {"deployment", "batch"}


def test_no_test_module_imports_another():
    tests = ROOT / "tests"
    test_modules = {module_name(path) for path in tests.rglob("test_*.py")}
    conftests = {module_name(path) for path in tests.rglob("conftest.py")}
    offenders = {
        module_name(path): sorted(imported(path) & (test_modules | conftests))
        for path in tests.rglob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}

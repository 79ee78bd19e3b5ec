"""Benchmark results files: several runs of every row, summarised as median and spread, with what
anyone needs to reproduce them (commit, machine, versions, the exact command).

`make bench` and `make bench-peers` write one JSON file per invocation under loadtests/results/
(`<kind>-<UTC time>-<commit>.json`, with a PNG chart of the same name); loadtests/report.py
turns the newest file of each kind into the figures in loadtests/RESULTS.md and
docs/performance.md. SCHEMA (JSON Schema) is what a file must hold; `validate` checks it.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "loadtests" / "results"
SCHEMA_ID = "clipfleet-bench-results/1"
KINDS = ("bench", "bench-peers")

_SPREAD = {
    "type": "object",
    "required": ["median", "min", "max", "values"],
    "properties": {
        "median": {"type": ["number", "null"]},
        "min": {"type": ["number", "null"]},
        "max": {"type": ["number", "null"]},
        "values": {"type": "array", "items": {"type": ["number", "null"]}},
    },
}
SCHEMA = {
    "type": "object",
    "required": [
        *("schema", "kind", "label", "created", "commit", "dirty", "command", "machine"),
        *("versions", "runs", "settings", "rows", "ratios", "targets"),
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "kind": {"enum": list(KINDS)},
        "label": {"type": "string"},
        "created": {"type": "string"},
        "commit": {"type": "string", "minLength": 7},
        "dirty": {"type": "boolean"},
        "command": {"type": "string", "minLength": 1},
        "machine": {
            "type": "object",
            "required": ["cpu_model", "cores", "ram_gib", "platform"],
        },
        "versions": {"type": "object", "required": ["python", "torch"]},
        "runs": {"type": "integer", "minimum": 1},
        "settings": {"type": "object"},
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "label", "unit", "metrics"],
                "properties": {
                    "id": {"type": "string"},
                    "label": {"type": "string"},
                    "unit": {"type": "string"},
                    "metrics": {
                        "type": "object",
                        "required": ["throughput"],
                        "additionalProperties": _SPREAD,
                    },
                },
            },
        },
        "ratios": {"type": "object", "additionalProperties": _SPREAD},
        "targets": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["op", "value", "text"],
                "properties": {"op": {"enum": [">=", "<="]}, "value": {"type": "number"}},
            },
        },
    },
}


def spread(values: list[float | None]) -> dict:
    """Median, min and max of the runs' values (NaN / None, a run that measured nothing, are
    left out of the summary but kept in `values`)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    clean = [None if v is None or math.isnan(v) else v for v in values]
    if not kept:
        return {"median": None, "min": None, "max": None, "values": clean}
    return {
        "median": statistics.median(kept),
        "min": min(kept),
        "max": max(kept),
        "values": clean,
    }


def summarise_rows(runs: list[list[dict]]) -> list[dict]:
    """Per-run rows -> one row per id with every numeric metric as a spread, in first-seen
    order. A run row is {"id", "label", "unit", "metrics": {name: number}}; a row missing from
    a run counts as a run that measured nothing."""
    order: dict[str, dict] = {}
    for rows in runs:
        for row in rows:
            order.setdefault(row["id"], {k: row[k] for k in ("id", "label", "unit")})
    summary = []
    for row_id, head in order.items():
        per_run = [next((r for r in rows if r["id"] == row_id), None) for rows in runs]
        names = list(dict.fromkeys(n for r in per_run if r for n in r["metrics"]))
        metrics = {
            name: spread([r["metrics"].get(name) if r else None for r in per_run]) for name in names
        }
        summary.append({**head, "metrics": metrics})
    return summary


def summarise_ratios(runs: list[dict[str, float]]) -> dict[str, dict]:
    names = list(dict.fromkeys(name for ratios in runs for name in ratios))
    return {name: spread([ratios.get(name) for ratios in runs]) for name in names}


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import psutil

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


def versions(**extra: str | None) -> dict:
    """This interpreter's python and libraries, plus `extra` (e.g. the peer venv's)."""
    found = {"python": platform.python_version()}
    for name, dist in (
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("ray", "ray"),
        ("transformers", "transformers"),
        ("open_clip", "open-clip-torch"),
        ("onnxruntime", "onnxruntime"),
    ):
        try:
            found[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {**found, **extra}


def repo_path(path: Path) -> str:
    """`path` relative to the repository when it is inside it, else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def command_line() -> str:
    """How this process was started, as a command to paste (`python -m loadtests.x ...`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec and spec.name else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


@functools.cache
def provenance() -> tuple[str, bool]:
    """The commit the code under measurement came from, and whether tracked files differed from
    it: read on the first call, so a benchmark calls it as it starts (edits made while it runs
    are not what it measured)."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    return commit, bool(_git("status", "--porcelain", "--untracked-files=no"))


def target(op: str, value: float, text: str) -> dict:
    """A goal for a ratio, judged on its median: `op` is ">=" or "<="."""
    return {"op": op, "value": value, "text": text}


def document(
    kind: str,
    label: str,
    run_rows: list[list[dict]],
    run_ratios: list[dict[str, float]],
    targets: dict,
    settings: dict,
    extra_versions: dict | None = None,
    command: str | None = None,
    raw: list | None = None,
) -> dict:
    """The results document of `len(run_rows)` runs: each run's rows and ratios summarised
    as medians and spreads, with what it takes to reproduce them."""
    commit, dirty = provenance()
    return {
        "schema": SCHEMA_ID,
        "kind": kind,
        "label": label,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "dirty": dirty,
        "command": command or command_line(),
        "machine": machine(),
        "versions": versions(**(extra_versions or {})),
        "runs": len(run_rows),
        "settings": settings,
        "rows": summarise_rows(run_rows),
        "ratios": summarise_ratios(run_ratios),
        "targets": targets,
        "raw": raw if raw is not None else run_rows,
    }


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError when `doc` is not a results document."""
    import jsonschema

    jsonschema.validate(doc, SCHEMA)


def file_stem(doc: dict) -> str:
    stamp = doc["created"].replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    return f"{doc['kind']}-{stamp}-{doc['commit'][:7]}"


def write(doc: dict, out: Path) -> Path:
    """Write `doc` to `out` (a .json path, or a folder for the standard name) and its chart
    beside it (same name, .png). Returns the JSON path."""
    validate(doc)
    path = out / f"{file_stem(doc)}.json" if out.suffix != ".json" else out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    from loadtests.chart import write_chart

    write_chart(doc, path.with_suffix(".png"))
    return path


def load_all(folder: Path = RESULTS_DIR) -> list[dict]:
    docs = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        doc["_path"] = path
        docs.append(doc)
    return docs


def latest(kind: str, folder: Path = RESULTS_DIR) -> dict | None:
    """The newest results document of `kind` in `folder` (by its `created` time)."""
    docs = [doc for doc in load_all(folder) if doc.get("kind") == kind]
    return max(docs, key=lambda doc: doc["created"]) if docs else None


def met(value: float | None, target: dict) -> bool | None:
    if value is None:
        return None
    return value >= target["value"] if target["op"] == ">=" else value <= target["value"]

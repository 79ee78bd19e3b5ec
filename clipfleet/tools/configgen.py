"""Generate every derived Serve config from serve_config.yaml plus small overlay files.

    python -m clipfleet.tools.configgen           # or: make cluster-sync
    python -m clipfleet.tools.configgen --check   # exit 1 when a generated file is stale
    python -m clipfleet.tools.configgen --ray-env # RAY_PROCESS_ENV as NAME=value words (`make run`)

serve_config.yaml is the base. Each target applies its overlays (cluster/overlays/*.yaml) in order:
mappings merge key by key (`args` included) and a `null` deletes the key, as in a JSON merge
patch (RFC 7386); `applications` and their `deployments` lists merge entry by entry on `name`.
Every config is validated on the way: `args` by AppArgs, and each `deployments` entry must name a
deployment those args produce (clipfleet.config.deployment_names), so a typo fails here instead
of configuring nothing. An inherited entry whose deployment the overlay's args no longer produce
(a profile the overlay removed) is dropped.

RAY_PROCESS_ENV is the environment every Ray process of a clipfleet node starts with (the Serve
proxy included, which no application's runtime_env reaches): `make run` passes it to `serve run`,
and the RayServices' containers list it, generated here too (the lines marked ENV_MARKER).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from clipfleet.config import AppArgs, deployment_names

ROOT = Path(__file__).resolve().parents[2]
BASE = "serve_config.yaml"
OVERLAYS = "cluster/overlays"
MARKER = "serveConfigV2: |"
# Arguments and results up to 2 MiB inside Ray's calls, not through the object store: the Serve
# proxy hands each request body to the ingress as such a result (docs/performance.md).
RAY_PROCESS_ENV = {"RAY_max_direct_call_object_size": "2097152"}
ENV_MARKER = "# make cluster-sync (RAY_PROCESS_ENV)"


class ConfigError(ValueError):
    """A base or overlay that would deploy something other than what it says."""


@dataclass(frozen=True)
class GeneratedFile:
    path: str
    overlays: tuple[str, ...]
    # a RayService manifest: only its serveConfigV2 block is generated
    embedded: bool = False


TARGETS = (
    GeneratedFile("cluster/serve_config.gpu.yaml", (f"{OVERLAYS}/gpu.yaml",)),
    GeneratedFile("cluster/rayservice.yaml", (f"{OVERLAYS}/pod.yaml",), embedded=True),
    GeneratedFile("cluster/rayservice.gpu.yaml", (f"{OVERLAYS}/gpu.yaml",), embedded=True),
    GeneratedFile("loadtests/bench_config.yaml", (f"{OVERLAYS}/bench.yaml",)),
    GeneratedFile(
        "loadtests/bench_config.gpu.yaml", (f"{OVERLAYS}/bench.yaml", f"{OVERLAYS}/bench.gpu.yaml")
    ),
    GeneratedFile("serve_config.fast-int8.yaml", (f"{OVERLAYS}/fast-int8.yaml",)),
    GeneratedFile(
        "loadtests/bench_config.peers.yaml",
        (f"{OVERLAYS}/bench.yaml", f"{OVERLAYS}/bench-peers.yaml"),
    ),
    GeneratedFile(
        "loadtests/bench_config.peers-onnx.yaml",
        (
            f"{OVERLAYS}/bench.yaml",
            f"{OVERLAYS}/bench-peers.yaml",
            f"{OVERLAYS}/bench-peers-onnx.yaml",
        ),
    ),
    GeneratedFile(
        "loadtests/bench_config.peers-bf16.yaml",
        (
            f"{OVERLAYS}/bench.yaml",
            f"{OVERLAYS}/bench-peers.yaml",
            f"{OVERLAYS}/bench-peers-bf16.yaml",
        ),
    ),
)


def merge(base, patch):
    """`patch` over `base`: mappings key by key (null deletes), named lists by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in ("applications", "deployments"):
                merged[key] = merge_named(base.get(key) or [], value)
            else:
                merged[key] = merge(base.get(key), value)
        return merged
    return patch


def merge_named(base: list[dict], patch: list[dict]) -> list[dict]:
    names = [entry["name"] for entry in patch]
    if len(names) != len(set(names)):
        raise ConfigError(f"an overlay lists a name twice in {names}")
    merged = {entry["name"]: entry for entry in base}
    for entry in patch:
        merged[entry["name"]] = merge(merged.get(entry["name"]), entry)
    return list(merged.values())


def app_names(app: dict, source: str) -> set[str]:
    try:
        return deployment_names(AppArgs(**(app.get("args") or {})))
    except ValueError as exc:
        raise ConfigError(f"{source}: application {app.get('name')!r}: {exc}") from exc


def check_names(config: dict, source: str) -> None:
    """Every `deployments` entry names a deployment its application's args produce."""
    for app in config.get("applications") or []:
        produced = app_names(app, source)
        configured = [entry["name"] for entry in app.get("deployments") or []]
        if len(configured) != len(set(configured)):
            raise ConfigError(f"{source}: a deployment is listed twice in {configured}")
        unknown = sorted(set(configured) - produced)
        if unknown:
            raise ConfigError(
                f"{source}: no deployment named {unknown} in application {app.get('name')!r}; "
                f"its args produce {sorted(produced)}"
            )
        for entry in app.get("deployments") or []:
            check_autoscaling(entry, source)


def check_autoscaling(entry: dict, source: str) -> None:
    """An autoscaling_config as Serve validates it (`min_replicas: 0`, scale to zero, is fine:
    clipfleet/ingress/coldstart.py)."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig

    try:
        AutoscalingConfig(**(entry.get("autoscaling_config") or {}))
    except (ValidationError, ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {entry['name']}.autoscaling_config: {exc}") from exc


def prune(config: dict, overlay: dict, source: str) -> dict:
    """Drop inherited entries for deployments the merged args no longer produce."""
    named_here = {
        app["name"]: {entry["name"] for entry in app.get("deployments") or []}
        for app in overlay.get("applications") or []
    }
    apps = []
    for app in config.get("applications") or []:
        keep = app_names(app, source) | named_here.get(app["name"], set())
        if app.get("deployments"):
            app = {**app, "deployments": [d for d in app["deployments"] if d["name"] in keep]}
        apps.append(app)
    return {**config, "applications": apps} if "applications" in config else config


def load(relative: str) -> dict:
    return yaml.safe_load((ROOT / relative).read_text()) or {}


def compose(overlays: tuple[str, ...], read=None) -> dict:
    """The base with each overlay applied in turn, validated at every step."""
    read = read or load
    config = read(BASE)
    check_names(config, BASE)
    for overlay_path in overlays:
        overlay = read(overlay_path)
        config = prune(merge(config, overlay), overlay, overlay_path)
        check_names(config, overlay_path)
    return config


class _Dumper(yaml.SafeDumper):
    """Block style, but lists of scalars and small mappings of scalars on one line."""


def _scalars(values) -> bool:
    return all(not isinstance(value, (dict, list)) for value in values)


def _represent_list(dumper: yaml.SafeDumper, items: list):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=_scalars(items))


def _represent_dict(dumper: yaml.SafeDumper, mapping: dict):
    flow = len(mapping) <= 3 and _scalars(mapping.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", mapping, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def render(config: dict, overlays: tuple[str, ...]) -> list[str]:
    sources = " + ".join((BASE, *overlays))
    header = [f"# Generated by `make cluster-sync` from {sources}:", "# edit those, not this."]
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=100)
    return [*header, *body.splitlines()]


def embed(manifest_text: str, body: list[str]) -> str:
    """The manifest with its `serveConfigV2: |` block replaced by `body`."""
    lines = manifest_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == MARKER)
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) >= indent
    ):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # keep the blank lines that separate the block from what follows
    block = [(" " * indent + line) if line.strip() else "" for line in body]
    return "\n".join(lines[: start + 1] + block + lines[end:]) + "\n"


def with_process_env(manifest_text: str) -> str:
    """Every container `env:` list of the manifest starting with RAY_PROCESS_ENV's entries
    (lines marked ENV_MARKER; earlier generated ones replaced)."""
    lines = [line for line in manifest_text.splitlines() if not line.endswith(ENV_MARKER)]
    out: list[str] = []
    for index, line in enumerate(lines):
        out.append(line)
        if line.strip() != "env:" or index + 1 == len(lines):
            continue
        following = lines[index + 1]
        indent = " " * (len(following) - len(following.lstrip()))
        for name, value in RAY_PROCESS_ENV.items():
            out.append(f'{indent}- {{name: {name}, value: "{value}"}}  {ENV_MARKER}')
    return "\n".join(out) + "\n"


def generate(target: GeneratedFile, read=None, current: str | None = None) -> str:
    """The text `target.path` should hold (`current`: its manifest text, for embedded ones)."""
    body = render(compose(target.overlays, read), target.overlays)
    if not target.embedded:
        return "\n".join(body) + "\n"
    if current is None:
        current = (ROOT / target.path).read_text()
    return with_process_env(embed(current, body))


def stale_targets() -> list[str]:
    return [t.path for t in TARGETS if generate(t) != (ROOT / t.path).read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipfleet.tools.configgen", description=__doc__
    )
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument("--ray-env", action="store_true", help="print RAY_PROCESS_ENV")
    options = parser.parse_args(argv)
    if options.ray_env:
        print(" ".join(f"{name}={value}" for name, value in RAY_PROCESS_ENV.items()))
        return 0
    try:
        if options.check:
            stale = stale_targets()
            for path in stale:
                print(f"{path} is stale: run `make cluster-sync`", file=sys.stderr)
            return 1 if stale else 0
        for target in TARGETS:
            (ROOT / target.path).write_text(generate(target))
            print(f"{' + '.join((BASE, *target.overlays))} -> {target.path}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Copy the Serve configs into the RayService manifests' `serveConfigV2` blocks.

    python cluster/sync_manifests.py        # or: make cluster-sync

serve_config.yaml -> cluster/rayservice.yaml (with http_options.host 0.0.0.0: in a pod the proxy
must listen on the pod IP); cluster/serve_config.gpu.yaml -> cluster/rayservice.gpu.yaml
verbatim. tests/unit/test_cluster_manifests.py fails when they drift.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "serveConfigV2: |"
PAIRS = {
    "cluster/rayservice.yaml": ("serve_config.yaml", True),
    "cluster/rayservice.gpu.yaml": ("cluster/serve_config.gpu.yaml", False),
}
CLUSTER_HOST_LINE = "  host: 0.0.0.0  # the one difference from serve_config.yaml"


def config_body(text: str, listen_everywhere: bool) -> list[str]:
    lines = text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the file's own header comment
    if listen_everywhere:
        lines = [CLUSTER_HOST_LINE if line.strip() == "host: 127.0.0.1" else line for line in lines]
    return lines


def embed(manifest_text: str, body: list[str]) -> str:
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


def main() -> None:
    for manifest, (config, listen_everywhere) in PAIRS.items():
        manifest_path = ROOT / manifest
        body = config_body((ROOT / config).read_text(), listen_everywhere)
        manifest_path.write_text(embed(manifest_path.read_text(), body))
        print(f"{config} -> {manifest}")


if __name__ == "__main__":
    main()

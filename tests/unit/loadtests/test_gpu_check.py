"""loadtests/gpu_check.py in its tiny CPU mode, so the GPU check cannot rot between GPU machines:
it runs every section and writes its JSON; and it imports neither Ray nor clipfleet, at the top
or inside a function (the GPU image has no Ray)."""

from __future__ import annotations

import ast
import json

from loadtests import gpu_check
from tests.support.serve_configs import ROOT


def imported_modules(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_it_imports_no_ray_and_no_clipfleet():
    modules = imported_modules(ROOT / "loadtests" / "gpu_check.py")
    own = {name for name in modules if name.startswith("loadtests")}
    assert own == {"loadtests.photos"}
    for path in (ROOT / "loadtests" / "gpu_check.py", ROOT / "loadtests" / "photos.py"):
        roots = {name.split(".")[0] for name in imported_modules(path)}
        assert not roots & {"ray", "clipfleet"}, path
        assert roots <= {
            *("__future__", "argparse", "concurrent", "io", "json", "pathlib", "platform"),
            *("subprocess", "sys", "time", "numpy", "PIL", "torch", "torchvision", "open_clip"),
            "loadtests",
        }, path


def test_tiny_mode_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--tiny", "--device", "cpu", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["environment"]["device"] == "cpu"
    assert {row["batch"] for row in report["model_only"]} == {1, 4}
    assert all(row["img_per_s"] > 0 for row in report["model_only"] + report["pipeline"])
    assert {row["mode"] for row in report["decode"]} == {"one per call", "list of 4 per call"}
    assert "ViT-B-32 model-only fp16, RTX 4090 (published)" in report["references"]

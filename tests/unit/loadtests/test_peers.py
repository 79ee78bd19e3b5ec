"""The peer benchmark's pure parts: its ratios and targets, the clipfleet config it runs, the
photos it sends, and the process-tree CPU accounting."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from loadtests import peers
from loadtests.cputime import TreeCpu, tree_cpu_seconds
from loadtests.photos import ensure_photos, make_photo
from tests.support.bench_results import run_rows


def test_ratios_compare_clipfleet_with_infinity_row_by_row():
    found = peers.ratios(run_rows(1.0))
    assert found["clipfleet_over_infinity_1"] == 12.0 / 10.0
    assert found["p95_clipfleet_vs_infinity_1"] == 1500.0 / 2000.0
    assert found["cpu_clipfleet_vs_infinity_1"] == 0.08 / 0.1
    assert found["clipfleet_over_infinity_16"] == 14.0 / 11.0
    assert found["infinity_over_own_forward_ceiling"] == 10.0 / 20.0
    assert "clipfleet_over_own_forward_ceiling" not in found  # that ceiling was not measured
    assert set(peers.TARGETS) <= set(found)


def test_the_clipfleet_config_serves_the_shared_directory_by_absolute_path():
    document = yaml.safe_load(peers.PEERS_CONFIG.read_text())
    profile = document["applications"][0]["args"]["profiles"]["fast"]
    assert profile["clip"] == {
        "backend": "transformers",
        "model": "build/peers/clip-vit-b-32-random",
    }
    peers.Clipfleet(8000, batch=8).edit(document)
    assert profile["clip"]["model"] == str(peers.MODEL_DIR) and peers.MODEL_DIR.is_absolute()
    assert profile["resnet"]["weights"] == str(peers.RESNET)
    clip = next(d for d in document["applications"][0]["deployments"] if d["name"] == "clip_fast")
    assert clip["user_config"]["max_batch_size"] == 8


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [(peers.PEERS_ONNX_CONFIG, "runtime", "onnx"), (peers.PEERS_BF16_CONFIG, "precision", "bf16")],
)
def test_the_onnx_and_bf16_rows_differ_from_the_torch_row_only_there(path, key, value):
    torch_doc, other_doc = (yaml.safe_load(p.read_text()) for p in (peers.PEERS_CONFIG, path))
    other_clip = other_doc["applications"][0]["args"]["profiles"]["fast"]["clip"]
    assert other_clip.pop(key) == value
    assert other_doc["applications"] == torch_doc["applications"]


def test_the_onnx_row_is_its_own_server_and_ratio():
    server = peers.Clipfleet(8000, None, "clipfleet-onnx", peers.PEERS_ONNX_CONFIG)
    assert (server.name, server.config) == ("clipfleet-onnx", peers.PEERS_ONNX_CONFIG)
    found = peers.ratios(
        [
            {"id": "infinity/1", "metrics": {"throughput": 10.0}},
            {"id": "clipfleet-onnx/1", "metrics": {"throughput": 13.0}},
        ]
    )
    assert found == {"clipfleet_onnx_over_infinity_1": 1.3}


def test_both_servers_get_the_same_request_shape():
    uris = ["data:image/jpeg;base64,AAAA"] * 2
    bodies = [server.body(uris) for server in (peers.Infinity(7997), peers.Clipfleet(8000, None))]
    assert [body.pop("model") for body in bodies] == ["clip", "fast"]
    assert (
        bodies[0]
        == bodies[1]
        == {
            "input": uris,
            "modality": "image",
            "encoding_format": "base64",
        }
    )


def test_photos_are_deterministic_unique_jpegs_of_photo_like_size(tmp_path):
    first = make_photo(3)
    assert first == make_photo(3) != make_photo(4)
    assert 110 * 1024 < len(first) < 180 * 1024  # ~144 KiB, not flat colour, not noise
    assert Image.open(io.BytesIO(first)).format == "JPEG"
    paths = ensure_photos(tmp_path, 2, workers=1)
    assert [p.name for p in paths] == ["00000.jpg", "00001.jpg"]
    assert paths[1].read_bytes() == make_photo(1)


BURN = (
    "import sys, time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass\n"
    "print('burnt', flush=True)\nif sys.argv[1] == 'stay': time.sleep(60)"
)


def test_tree_cpu_counts_live_children_and_reaped_ones():
    meter = TreeCpu(os.getpid())
    meter.start()
    staying, leaving = (
        subprocess.Popen([sys.executable, "-c", BURN, mode], stdout=subprocess.PIPE, text=True)
        for mode in ("stay", "leave")
    )
    try:
        assert staying.stdout.readline().strip() == "burnt"  # alive, 0.2 s of CPU spent
        leaving.wait(60)  # exited and reaped: its time is now this process's children's
        meter.stop()
        assert meter.seconds >= 0.4
    finally:
        staying.kill()
        staying.wait()
    assert tree_cpu_seconds(2**22 + 12345) == 0.0  # no such process: nothing

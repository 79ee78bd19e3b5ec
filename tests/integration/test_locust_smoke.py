"""The Locust scenarios run headless against the app (bounded: 4 users, 8 s) without failures."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.support.images import claim_loopback_port, release_loopback_port
from tests.support.serve_apps import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_locust_mix_runs_clean(app_url, tmp_path):
    import requests

    port = claim_loopback_port()  # a port that tiny_args' fetch.allowed_ports lists
    bin_dir = Path(sys.executable).parent
    images = subprocess.Popen(
        [sys.executable, "-m", "loadtests.images", "--port", str(port), "--count", "12"],
        cwd=ROOT,
    )
    try:
        wait_for(
            lambda: _answers(requests, f"http://127.0.0.1:{port}/img/0.jpg"), 30, 0.5, "images"
        )
        result = subprocess.run(
            [
                str(bin_dir / "locust"),
                "-f",
                "loadtests/locustfile.py",
                "--headless",
                "-u",
                "4",
                "-r",
                "4",
                "-t",
                "8s",
                "--host",
                app_url,
                "--csv",
                str(tmp_path / "locust"),
                "--only-summary",
            ],
            cwd=ROOT,
            env={
                "CLIPFLEET_IMAGE_BASE": f"http://127.0.0.1:{port}",
                "CLIPFLEET_IMAGE_COUNT": "12",
                "PATH": str(bin_dir),
            },
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        images.terminate()
        images.wait(10)
        release_loopback_port(port)
    rows = list(csv.DictReader((tmp_path / "locust_stats.csv").open()))
    total = next(row for row in rows if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 10, result.stdout + result.stderr
    assert int(total["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()
    assert any(row["Type"] == "variant" for row in rows)


def _answers(requests, url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False

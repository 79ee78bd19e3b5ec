"""`clipfleet score-csv` under load, against a tiny fake /v1/score on 127.0.0.1 that answers
at once: API keys, 503 + Retry-After, an interrupted run resumed, and a 100,000-row CSV in
bounded memory (peak RSS of the CLI process)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clipfleet.tools.cli import main
from tests.support.uvicorn_thread import serve_in_thread

ROOT = Path(__file__).resolve().parents[3]
MAX_RSS_MIB = 500
ROW_TEXT = re.compile(rb'"text": ?"row (\d+)"')


class FakeScorer:
    """An ASGI /v1/score: every pair scores its row number (from the text `row <n>`)."""

    def __init__(self) -> None:
        self.api_key: str | None = None
        self.unavailable = 0  # answer this many requests with 503 + Retry-After
        self.retry_after = "1"
        self.hang_after: int | None = None  # requests after this many wait for `release`
        self.release = threading.Event()
        self.requests: list[tuple[float, int]] = []  # (time, status)
        self.rows_seen: list[int] = []
        self.batches: list[list[int]] = []  # the rows of each answered request
        self.in_flight = 0
        self.max_in_flight = 0
        self.priorities: set[bytes] = set()  # X-Clipfleet-Priority of every request

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, headers, payload = await self.answer(dict(scope["headers"]), body)
        finally:
            self.in_flight -= 1
        self.requests.append((time.monotonic(), status))
        raw = [(b"content-type", b"application/json"), *headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    async def answer(self, headers: dict, body: bytes):
        self.priorities.add(headers.get(b"x-clipfleet-priority", b""))
        if self.api_key and headers.get(b"authorization") != f"Bearer {self.api_key}".encode():
            error = {"type": "unauthorized", "message": "an API key is required", "param": None}
            return 401, [], {"error": error}
        if self.unavailable > 0:
            self.unavailable -= 1
            error = {"type": "service_unavailable", "message": "busy", "param": None}
            return 503, [(b"retry-after", self.retry_after.encode())], {"error": error}
        if self.hang_after is not None and len(self.requests) >= self.hang_after:
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        rows = [int(row) for row in ROW_TEXT.findall(body)]  # no need to parse the base64
        self.rows_seen += rows
        self.batches.append(rows)
        results = [{"clip_score": float(row), "cosine": 0.0} for row in rows]
        return 200, [], {"results": results, "profile": "fast", "variant": "stable", "model": "x"}


@pytest.fixture
def fake():
    scorer = FakeScorer()
    with serve_in_thread(scorer) as url:
        scorer.url = url
        yield scorer
    scorer.release.set()


def write_csv(path: Path, rows: int, image_files: int = 0) -> Path:
    """Rows `row <n>` with image URLs, or with local image files (sent as base64) when
    `image_files` is given: that many 4 KiB files, reused row after row."""
    for index in range(image_files):
        (path.parent / f"img{index}.bin").write_bytes(os.urandom(4096))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_url", "caption"])
        for row in range(rows):
            image = f"img{row % image_files}.bin" if image_files else f"http://x.invalid/{row}.jpg"
            writer.writerow([image, f"row {row}"])
    return path


def output_rows(path: Path) -> list[dict]:
    with path.with_name(f"{path.stem}_with_scores.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_api_key_from_flag_or_environment(fake, tmp_path, monkeypatch, capsys):
    fake.api_key = "secret"
    path = write_csv(tmp_path / "in.csv", 10)
    assert main(["score-csv", str(path), "--url", fake.url]) == 2
    assert "HTTP 401" in capsys.readouterr().err
    assert main(["score-csv", str(path), "--url", fake.url, "--api-key", "secret"]) == 0
    monkeypatch.setenv("CLIPFLEET_API_KEY", "secret")
    assert main(["score-csv", str(path), "--url", fake.url]) == 0
    assert [float(row["clip_score"]) for row in output_rows(path)] == list(range(10))
    assert fake.priorities == {b"bulk"}  # a CSV run never competes with interactive users


def test_503_with_retry_after_is_retried(fake, tmp_path):
    fake.unavailable = 3
    path = write_csv(tmp_path / "in.csv", 40)
    args = ["score-csv", str(path), "--url", fake.url, "--batch-size", "10", "--concurrency", "2"]
    assert main(args) == 0
    assert [float(row["clip_score"]) for row in output_rows(path)] == list(range(40))
    statuses = [status for _, status in fake.requests]
    assert statuses.count(503) == 3 and statuses.count(200) == 4
    first_ok = next(at for at, status in fake.requests if status == 200)
    first_busy = next(at for at, status in fake.requests if status == 503)
    assert first_ok - first_busy >= 0.9  # every request waited out Retry-After: 1


def test_retry_budget_is_bounded(fake, tmp_path):
    fake.unavailable = 10_000
    fake.retry_after = "0"
    path = write_csv(tmp_path / "in.csv", 4)
    args = ["score-csv", str(path), "--url", fake.url, "--batch-size", "4", "--retries", "2"]
    assert main(args) == 1
    assert len(fake.requests) == 3  # one try and two retries, no per-row fan-out of a 503
    assert all("HTTP 503" in row["error"] for row in output_rows(path))


def test_compare_modes_never_share_an_image(fake, tmp_path):
    """Each image is scored by one mode only, so neither mode reads the other's cache."""
    path = tmp_path / "in.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_url", "caption"])
        writer.writerows([f"http://x.invalid/{row % 20}.jpg", f"row {row}"] for row in range(200))
    args = ["score-csv", str(path), "--url", fake.url, "--compare", "--batch-size", "8"]
    assert main(args) == 0
    single = {row % 20 for rows in fake.batches if len(rows) == 1 for row in rows}
    batch = {row % 20 for rows in fake.batches if len(rows) > 1 for row in rows}
    assert single and batch and not single & batch
    assert sorted(fake.rows_seen) == list(range(200))  # every row scored once
    assert [float(row["clip_score"]) for row in output_rows(path)] == list(range(200))


def run_cli(*args: str) -> subprocess.Popen:
    """The CLI in its own process; it prints its peak RSS (KiB) on stderr when it ends. (VmHWM,
    not getrusage's ru_maxrss: that one keeps the forking parent's figure across exec.)"""
    code = (
        "import re, sys; from clipfleet.tools.cli import main; status = main(sys.argv[1:]); "
        "hwm = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1); "
        "print('MAXRSS', hwm, file=sys.stderr); sys.exit(status)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, "score-csv", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_resume_after_an_interrupted_run(fake, tmp_path):
    path = write_csv(tmp_path / "in.csv", 200)
    output = tmp_path / "in_with_scores.csv"
    fake.hang_after = 5  # five requests of 10 rows answer, then the server stalls
    process = run_cli(str(path), "--url", fake.url, "--batch-size", "10", "--concurrency", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(fake.requests) < 5:
        time.sleep(0.05)
    time.sleep(0.5)
    process.kill()  # interrupted: no chance to clean up
    process.communicate(timeout=30)
    written = output_rows(path)
    assert len(written) == 50 and [row["caption"] for row in written] == [
        f"row {n}" for n in range(50)
    ]
    with output.open("a", newline="") as handle:
        handle.write("http://x.invalid/50.jpg,row 5")  # a torn last line
    fake.hang_after = None
    fake.release.set()  # the killed run's stalled requests finish (nobody reads their answers)
    while fake.in_flight:
        time.sleep(0.05)
    seen_before = len(fake.rows_seen)
    assert main(["score-csv", str(path), "--url", fake.url, "--resume"]) == 0
    rows = output_rows(path)
    assert [float(row["clip_score"]) for row in rows] == list(range(200))
    assert sorted(fake.rows_seen[seen_before:]) == list(range(50, 200))  # nothing sent twice


def test_100k_rows_in_bounded_memory(fake, tmp_path):
    # Local files: their base64 for every row at once would be ~550 MB.
    path = write_csv(tmp_path / "big.csv", 100_000, image_files=4)
    process = run_cli(str(path), "--url", fake.url, "--batch-size", "64", "--concurrency", "8")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    peak_mib = int(err.split("MAXRSS")[-1].split()[0]) / 1024
    assert peak_mib < MAX_RSS_MIB, f"peak RSS {peak_mib:.0f} MiB"
    assert fake.max_in_flight <= 8
    assert len(fake.rows_seen) == 100_000
    with path.with_name("big_with_scores.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        for expected, row in enumerate(reader):
            assert float(row["clip_score"]) == expected
    assert expected == 99_999

"""The CLIs read only what they should: `clipfleet score-csv` and `clipfleet batch` read a local
image only when it is a regular file under the image root, at most the byte limit; any other
path is that row's error and is never opened. score-csv's output cells never run as formulas."""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from clipfleet.batch.inputs import Location
from clipfleet.batch.stages import ERROR, DecodeTask, decode_batch
from clipfleet.config import FetchLimits
from clipfleet.images import localfiles
from clipfleet.scorecsv.rows import inert
from clipfleet.tools.cli import main
from tests.support.images import image_bytes
from tests.support.score_csv import read_output

HOSTILE_PATHS = {
    "parent": "../secret.jpg",
    "absolute_outside": "{outside}/secret.jpg",
    "home": "~/secret.jpg",
    "escaping_symlink": "images/link.jpg",
    "proc": "/proc/self/environ",
    "device": "/dev/zero",
    "fifo": "images/pipe.jpg",
}


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """root/ (the CSV's folder) with images/a.jpg, a symlink out and a FIFO; secret.jpg beside
    root; every path `os.open` is asked to open, recorded."""
    root, outside = tmp_path / "root", tmp_path
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(image_bytes(seed=1))
    (outside / "secret.jpg").write_bytes(image_bytes(seed=2))
    (root / "images" / "link.jpg").symlink_to(outside / "secret.jpg")
    os.mkfifo(root / "images" / "pipe.jpg")
    opened: list[str] = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(localfiles.os, "open", recording_open)
    return root, outside, opened


def hostile_values(outside: Path) -> dict[str, str]:
    return {name: value.format(outside=outside) for name, value in HOSTILE_PATHS.items()}


def run_bounded(function, timeout_s: float = 60):
    """`function()`'s result; fails (instead of hanging the suite) if it takes longer."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(function()), daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert result, f"still running after {timeout_s} s (a pipe or device was opened?)"
    return result[0]


def test_score_csv_sends_only_files_under_the_root(server_url, tree):
    root, outside, opened = tree
    values = hostile_values(outside)
    path = root / "in.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerow(["images/a.jpg", "a cat"])
        writer.writerows([value, name] for name, value in values.items())
    status = run_bounded(lambda: main(["score-csv", str(path), "--url", server_url]))
    assert status == 1
    rows = read_output(path)
    assert rows[0]["error"] == "" and float(rows[0]["clip_score"]) >= 0
    for row in rows[1:]:
        assert row["clip_score"] == "" and row["error"].startswith("cannot read image file")
    assert opened == [str(root / "images" / "a.jpg")]  # nothing else was ever opened


def test_score_csv_image_root_and_byte_limit(server_url, tree):
    root, outside, _ = tree
    path = root / "in.csv"
    path.write_text(f"image,caption\nroot/images/a.jpg,a cat\n{outside}/secret.jpg,a secret\n")
    args = ["score-csv", str(path), "--url", server_url, "--image-root", str(outside)]
    assert main(args) == 0  # both lie under it; relative paths start there
    assert main([*args, "--max-image-bytes", "100"]) == 1
    assert all("larger than 100 bytes" in row["error"] for row in read_output(path))


@pytest.mark.parametrize("cell", ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tx"])
def test_cells_a_spreadsheet_would_run_are_written_inert(server_url, tree, cell):
    root, _, _ = tree
    path = root / "in.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [["id", "image", "caption", "note"], [cell, cell, "x", "-0.5"]]
        )
    main(["score-csv", str(path), "--url", server_url])
    (row,) = read_output(path)
    assert row["id"] == row["image"] == "'" + cell and row["note"] == "-0.5"
    assert row["error"].startswith("cannot read image file")  # the cell is no local image
    assert inert(row["error"]) == row["error"]


def test_batch_reads_only_files_under_the_root(tree):
    root, outside, opened = tree
    values = ["images/a.jpg", *hostile_values(outside).values()]
    table = pa.table({"image": values, "caption": ["x"] * len(values)})
    plan = DecodeTask(Location.parse(str(root)), "image", "caption", FetchLimits(), 1000)
    errors = run_bounded(lambda: decode_batch(table, plan)[ERROR].to_pylist())
    assert errors[0] is None
    assert all(error.startswith("cannot read image file") for error in errors[1:]), errors
    assert opened == [str(root / "images" / "a.jpg")]
    small = DecodeTask(
        Location.parse(str(root)), "image", "caption", FetchLimits(max_bytes=1024), 1
    )
    assert "larger than 1024 bytes" in decode_batch(table.slice(0, 1), small)[ERROR][0].as_py()

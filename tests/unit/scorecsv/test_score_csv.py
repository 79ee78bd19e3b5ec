"""`clipfleet score-csv` against a real HTTP server (uvicorn) over the Ray-free local DAG."""

from __future__ import annotations

import csv

import pytest

from clipfleet.tools.cli import main
from tests.support.images import image_bytes
from tests.support.score_csv import read_output
from tests.support.servers import free_port


@pytest.fixture
def input_csv(tmp_path, image_server):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(image_bytes(seed=1))
    (images / "b.png").write_bytes(image_bytes(seed=2, fmt="PNG"))
    (images / "notes.txt").write_text("not an image")
    rows = [
        ("images/a.jpg", "a photo of a cat"),
        (str(images / "b.png"), "a red dress"),
        (f"{image_server.base_url}/img.jpg", "a dog in a park"),
        ("images/missing.jpg", "nothing here"),
        ("images/notes.txt", "a text file"),
        ("images/a.jpg", "the same image again"),
    ]
    path = tmp_path / "challenge_set.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "url", "caption"])
        writer.writerows((index, image, text) for index, (image, text) in enumerate(rows))
    return path


def test_score_csv_scores_good_rows_and_reports_bad_ones(server_url, input_csv, capsys):
    status = main(["score-csv", str(input_csv), "--url", server_url, "--batch-size", "4"])
    assert status == 1  # some rows failed, the rest were still scored
    rows = read_output(input_csv)
    assert [row["id"] for row in rows] == [str(index) for index in range(6)]
    for row in (rows[0], rows[1], rows[2], rows[5]):
        assert float(row["clip_score"]) >= 0 and row["error"] == ""
    assert rows[3]["clip_score"] == "" and "cannot read image file" in rows[3]["error"]
    assert rows[4]["clip_score"] == "" and "HTTP 415" in rows[4]["error"]
    err = capsys.readouterr().err
    assert "row 4:" in err and "row 5:" in err


def test_score_csv_compare_prints_both_throughputs(server_url, input_csv, capsys):
    args = ["score-csv", str(input_csv), "--url", server_url, "--compare", "--concurrency", "2"]
    assert main([*args, "--profile", "accurate"]) == 1
    out = capsys.readouterr().out
    assert "Single:" in out and "Batch:" in out and "img/s" in out and "Speedup:" in out
    stats = input_csv.with_name("challenge_set_comparison_stats.csv").read_text()
    assert stats.startswith("mode,rows,successful") and "single" in stats and "batch" in stats
    assert sum(1 for row in read_output(input_csv) if row["clip_score"]) == 4


def test_score_csv_server_down_marks_every_row(tmp_path, capsys):
    path = tmp_path / "in.csv"
    image = tmp_path / "a.jpg"
    image.write_bytes(image_bytes())
    path.write_text(f"image_input,text_prompt\n{image},a cat\n")
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["score-csv", str(path), "--url", url, "--timeout", "5"]) == 1
    assert "request failed" in read_output(path)[0]["error"]


def test_score_csv_input_errors(tmp_path, capsys):
    assert main(["score-csv", str(tmp_path / "none.csv")]) == 2
    path = tmp_path / "bad.csv"
    path.write_text("foo,bar\n1,2\n")
    assert main(["score-csv", str(path)]) == 2
    assert "no image column" in capsys.readouterr().err

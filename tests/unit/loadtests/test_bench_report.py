"""The docs' benchmark figures are generated from the committed results files
(loadtests/report.py): they match them, regeneration keeps the hand-written prose, and a region
no renderer makes is refused."""

from __future__ import annotations

import json

import pytest

from loadtests import report, results
from tests.support.bench_results import sample_document

DOC = """# Results

Hand-written prose stays.

<!-- generated:bench-peers:table -->
stale text
<!-- /generated:bench-peers:table -->

More prose, and a second region:

<!-- generated:bench:summary -->
<!-- /generated:bench:summary -->
"""


def plain(text: str) -> str:
    """The docs' typography (en dash, multiplication sign) in ASCII, for readable assertions."""
    return text.replace(report.DASH, "-").replace(report.TIMES, "x")


def committed(doc: dict, folder) -> dict:
    path = results.write(doc, folder)
    return {**json.loads(path.read_text()), "_path": path}


def test_the_docs_generated_figures_match_the_committed_results():
    assert report.stale() == [], "run `python -m loadtests.report` and commit the docs"


def test_every_doc_has_generated_regions_for_both_benchmarks():
    keys = {
        match["key"] for path in report.DOCS for match in report.REGION.finditer(path.read_text())
    }
    assert {"bench:table", "bench-peers:table", "bench:summary", "bench-peers:summary"} <= keys


def test_regeneration_rewrites_regions_and_keeps_the_prose(tmp_path):
    doc = committed(sample_document(), tmp_path)
    text = report.regenerate(DOC, {"bench-peers": doc, "bench": None})
    assert "Hand-written prose stays." in text and "More prose, and a second region:" in text
    assert "stale text" not in text
    assert "| clipfleet/1 label | img/s | 13.2 (12-14.4) | 1.2 | 1.5 | 0.08 | 0 |" in plain(text)
    assert "_No `bench` results committed yet: run `make bench`._" in text
    assert report.regenerate(text, {"bench-peers": doc, "bench": None}) == text  # a fixed point


def test_a_changed_figure_makes_the_doc_stale(tmp_path):
    folder = tmp_path / "results"
    doc = committed(sample_document(), folder)
    page = tmp_path / "page.md"
    page.write_text(report.regenerate(DOC, {"bench-peers": doc, "bench": None}))
    assert report.stale((page,), folder) == []
    page.write_text(page.read_text().replace("13.2", "15.0"))
    assert report.stale((page,), folder) == [str(page)]


def test_targets_are_judged_on_the_medians(tmp_path):
    doc = committed(sample_document(), tmp_path)
    doc["ratios"]["clipfleet_over_infinity_16"] = results.spread([1.1, 1.3, 1.15])
    table = plain(report.render_targets(doc))
    assert "| clipfleet >= 1.1 x infinity's img/s, one image/request | 1.2 x | met |" in table
    assert "| ... with a p95 at most infinity's | 0.75 x | met |" in table
    # a median below the goal is not met, whatever the best run gave
    assert "16 images/request | 1.15 (1.1-1.3) x | **not met** |" in table


def test_a_smoke_result_says_so(tmp_path):
    doc = committed(sample_document(runs=1, label="smoke"), tmp_path)
    source = report.render_source(doc)
    assert "**SMOKE RESULT, 1 run(s) of 60 s" in source
    assert "python -m loadtests.peers --runs 3" in source
    assert doc["commit"][:10] in source


@pytest.mark.parametrize(
    "text",
    [
        "<!-- generated:bench:nonsense -->\n<!-- /generated:bench:nonsense -->\n",
        "<!-- generated:other:table -->\n<!-- /generated:other:table -->\n",
        "<!-- generated:bench:table -->\nno end marker\n",
    ],
)
def test_a_region_no_renderer_makes_is_refused(text):
    with pytest.raises(report.ReportError):
        report.regenerate(text, {"bench": None, "bench-peers": None})


def test_figures_show_the_median_and_the_spread():
    spread = {"median": 2.0, "min": 1.0, "max": 3.5, "values": [1, 2, 3.5]}
    assert plain(report.figure(spread)) == "2 (1-3.5)"
    assert report.figure({"median": 2.0, "min": 2.0, "max": 2.0, "values": [2.0]}) == "2"
    assert report.figure({"median": 1500.0, "min": 1000, "max": 2000, "values": []}, 1e-3) == (
        "1.5"
    )
    assert report.figure(None) == report.DASH


def bench_summary(row_ids: list[str]) -> str:
    rows = [
        {"id": row_id, "label": row_id, "unit": "req/s", "metrics": {"throughput": 10.0}}
        for row_id in row_ids
    ]
    rows = results.summarise_rows([rows] * 3)
    path = results.RESULTS_DIR / "bench-x.json"
    doc = {"kind": "bench", "label": "full", "runs": 3, "rows": rows, "ratios": {}, "_path": path}
    return plain(report.render_summary(doc))


def test_the_bench_summary_names_only_the_rows_the_run_measured():
    measured = bench_summary(["make-run@32", "bench@32", "fast-int8@32"])
    assert "the fast profile alone 10" in measured
    assert "fast profile" not in bench_summary(["make-run@32", "fast-int8@32"])

"""Benchmark results files (loadtests/results.py): medians and spreads over runs, the JSON schema,
the files and charts written, and the committed files themselves."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest

from loadtests import results
from tests.support.bench_results import sample_document


def test_spread_is_median_min_max_of_the_runs():
    assert results.spread([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "values": [3.0, 1.0, 2.0],
    }
    assert results.spread([4.0, 1.0])["median"] == 2.5


def test_a_run_that_measured_nothing_is_kept_but_not_summarised():
    summary = results.spread([2.0, math.nan, None, 4.0])
    assert (summary["median"], summary["min"], summary["max"]) == (3.0, 2.0, 4.0)
    assert summary["values"] == [2.0, None, None, 4.0]  # JSON has no NaN
    assert results.spread([math.nan])["median"] is None


def test_rows_are_summarised_by_id_in_first_seen_order():
    runs = [
        [{"id": "a", "label": "A", "unit": "img/s", "metrics": {"throughput": 1.0, "p95_ms": 9}}],
        [
            {"id": "b", "label": "B", "unit": "img/s", "metrics": {"throughput": 5.0}},
            {"id": "a", "label": "A", "unit": "img/s", "metrics": {"throughput": 3.0}},
        ],
    ]
    rows = results.summarise_rows(runs)
    assert [row["id"] for row in rows] == ["a", "b"]
    assert rows[0]["metrics"]["throughput"]["values"] == [1.0, 3.0]
    assert rows[0]["metrics"]["p95_ms"]["values"] == [9, None]  # missing in run 2
    assert rows[1]["metrics"]["throughput"]["values"] == [None, 5.0]  # row missing in run 1


def test_a_document_names_commit_machine_versions_and_command():
    doc = sample_document()
    results.validate(doc)
    assert len(doc["commit"]) == 40
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["ram_gib"] > 0
    assert doc["machine"]["cpu_model"]
    assert doc["versions"]["torch"] and doc["versions"]["infinity_emb"] == "0.0.78"
    assert doc["command"].startswith("python -m loadtests.peers")
    assert doc["ratios"]["clipfleet_over_infinity_1"]["median"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda doc: doc.pop("commit"),
        lambda doc: doc["machine"].pop("cpu_model"),
        lambda doc: doc.update(kind="other"),
        lambda doc: doc["rows"][0]["metrics"].pop("throughput"),
        lambda doc: doc["rows"][0]["metrics"]["throughput"].pop("max"),
        lambda doc: doc["targets"]["clipfleet_over_infinity_1"].update(op=">"),
    ],
)
def test_the_schema_refuses_an_incomplete_document(breakage):
    doc = sample_document()
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        results.validate(doc)


def test_write_names_the_file_by_kind_time_and_commit_and_draws_its_chart(tmp_path):
    doc = sample_document(runs=2)
    path = results.write(doc, tmp_path)
    assert path.name.startswith("bench-peers-") and path.name.endswith(f"{doc['commit'][:7]}.json")
    assert json.loads(path.read_text())["rows"] == doc["rows"]
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert results.latest("bench-peers", tmp_path)["_path"] == path
    assert results.latest("bench", tmp_path) is None


def test_every_committed_results_file_is_valid_and_has_its_chart():
    for doc in results.load_all():
        results.validate({key: value for key, value in doc.items() if key != "_path"})
        assert doc["_path"].with_suffix(".png").is_file(), doc["_path"]

"""A small results document as loadtests.peers writes one, for the report and schema tests."""

from __future__ import annotations

import copy

from loadtests import results
from loadtests.peers import TARGETS


def run_rows(scale: float) -> list[dict]:
    """One run's rows: two servers at one and sixteen images per request, and a ceiling."""

    def load(row_id: str, throughput: float, p95_ms: float, cpu: float) -> dict:
        return {
            "id": row_id,
            "label": f"{row_id} label",
            "unit": "img/s",
            "metrics": {
                "throughput": throughput * scale,
                "p50_ms": p95_ms * 0.8,
                "p95_ms": p95_ms,
                "errors": 0,
                "cpu_s_per_image": cpu,
            },
        }

    ceiling = {"throughput": 20.0 * scale}
    return [
        load("infinity/1", 10.0, 2000.0, 0.1),
        load("infinity/16", 11.0, 9000.0, 0.09),
        load("clipfleet/1", 12.0, 1500.0, 0.08),
        load("clipfleet/16", 14.0, 8000.0, 0.07),
        {"id": "ceiling/infinity-stack/forward", "label": "c", "unit": "img/s", "metrics": ceiling},
    ]


def sample_document(runs: int = 3, label: str = "full") -> dict:
    from loadtests.peers import ratios

    per_run = [run_rows(1.0 + 0.1 * index) for index in range(runs)]
    return results.document(
        "bench-peers",
        label,
        per_run,
        [ratios(rows) for rows in per_run],
        copy.deepcopy(TARGETS),
        {"seconds": 60},
        extra_versions={"infinity_emb": "0.0.78"},
        command="python -m loadtests.peers --runs 3",
    )

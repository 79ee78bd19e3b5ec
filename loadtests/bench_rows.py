"""`make bench`'s rows: one run's report (loadtests/bench.py) as results rows, its targets, and
the per-run table printed while it runs."""

from __future__ import annotations

from loadtests.results import target

SYSTEM_LABELS = {
    "make-run": "clipfleet, serve_config.yaml (what `make run` serves)",
    "bench": "clipfleet, loadtests/bench_config.yaml (fast profile only)",
    "fast-int8": "clipfleet, serve_config.fast-int8.yaml (ONNX Runtime int8)",
}
# Issue 17 / 22's goals for the shipped config (loadtests/RESULTS.md), judged on the medians.
TARGETS = {
    "make_run_over_naive_at_32": target(
        ">=", 1.0, "`make run`'s config >= 1.0 x the naive pipeline"
    ),
    "make_run_over_baseline_at_32": target(
        ">=", 1.6, "`make run`'s config >= 1.6 x the seed-style server"
    ),
    "p95_make_run_vs_baseline_at_32": target(
        "<=", 1.0, "... with a p95 at most the seed-style server's"
    ),
    "fast_int8_over_naive_at_32": target(">=", 1.6, "fast-int8 >= 1.6 x the naive fp32 pipeline"),
}
LOAD_METRICS = ("p50_ms", "p95_ms", "p99_ms", "errors", "cpu_percent", "server_cpu_s_per_request")


def _load_row(row_id: str, label: str, result: dict) -> dict:
    metrics = {"throughput": result["throughput_rps"]}
    metrics.update({name: result[name] for name in LOAD_METRICS if name in result})
    if "mean_batch_size" in result:
        metrics["mean_batch_size"] = result["mean_batch_size"]
    return {"id": row_id, "label": label, "unit": "req/s", "metrics": metrics}


def rows(report: dict) -> list[dict]:
    """One run's report as rows: naive and ceiling in pairs/s, the servers in req/s (one
    /v1/score pair per request) at each client level."""
    found = []
    for key, label in (
        ("naive", "naive in-process (stock open_clip, batch 32)"),
        ("ceiling", "in-process ceiling (clipfleet's model code, batch 16)"),
    ):
        if key in report:
            metrics = {"throughput": report[key]["pairs_per_s"]}
            found.append({"id": key, "label": label, "unit": "pairs/s", "metrics": metrics})
    if "baseline" in report:
        found.append(_load_row("baseline@32", "seed-style server @32", report["baseline"]))
    for name, results in report.get("systems", {}).items():
        for result in results:
            clients = result["clients"]
            label = f"{SYSTEM_LABELS[name]} @{clients}"
            found.append(_load_row(f"{name}@{clients}", label, result))
    if "clipfleet_repeats_32" in report:
        found.append(
            _load_row(
                "repeats@32",
                "clipfleet bench_config, 8 repeated images (cache on) @32",
                report["clipfleet_repeats_32"],
            )
        )
    return found


def print_table(report: dict) -> None:
    """One run, as it finishes."""
    print(f"{'row':<72}{'unit':>8}{'value':>8}{'p95 ms':>8}{'batch':>7}{'errors':>7}")
    for row in rows(report):
        metrics = row["metrics"]
        p95 = metrics.get("p95_ms")
        batch = metrics.get("mean_batch_size")
        print(
            f"{row['label'][:71]:<72}{row['unit']:>8}{metrics['throughput']:>8.1f}"
            f"{'' if p95 is None else f'{p95:.0f}':>8}{'' if batch is None else f'{batch:.1f}':>7}"
            f"{metrics.get('errors', ''):>7}"
        )
    for name, value in report.get("ratios", {}).items():
        print(f"{name}: {value:.2f}")
    systems = [result for measured in report.get("systems", {}).values() for result in measured]
    for result in (report.get("baseline"), *systems):
        if result and result.get("errors_by_kind"):
            print(f"errors @{result['clients']}: {result['errors_by_kind']}")

"""The docs' benchmark figures, generated from the committed results files.

    python -m loadtests.report            # rewrite the generated regions of the docs
    python -m loadtests.report --check    # exit 1 (naming them) when a region is stale

A generated region is the text between `<!-- generated:KEY -->` and `<!-- /generated:KEY -->`
in one of DOCS; everything outside the markers is hand-written and kept as it is. KEY is
`<kind>:<part>`: kind `bench` (`make bench`) or `bench-peers` (`make bench-peers`), part
`source` (file, commit, machine, versions, command), `table` (every row: median and min-max
over the runs), `targets` (the goals, judged on the medians) or `summary` (one paragraph).
Each region is rendered from the newest results file of its kind in loadtests/results/.
tests/unit/loadtests/test_bench_report.py fails while a region differs from what the files give.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from loadtests.results import KINDS, RESULTS_DIR, ROOT, latest, met, repo_path, write

DOCS = (ROOT / "loadtests" / "RESULTS.md", ROOT / "docs" / "performance.md")
REGION = re.compile(
    r"(?P<open><!-- generated:(?P<key>[\w-]+:[\w-]+) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- /generated:(?P=key) -->)",
    re.S,
)
CPU_METRICS = ("cpu_s_per_image", "server_cpu_s_per_request")
DASH, TIMES = "\u2013", "\u00d7"  # the docs' typography: 7.5\u20138.1, 1.2 \u00d7


class ReportError(ValueError):
    """A doc names a region no renderer makes, or its markers don't pair up."""


def number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return DASH
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def figure(spread: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    """`median (min-max)`, or the one value of a single run; a dash when nothing was measured."""
    if not spread or spread["median"] is None:
        return DASH
    median = number(spread["median"] * scale, digits)
    low, high = (number(spread[end] * scale, digits) for end in ("min", "max"))
    if low == high or len(spread["values"]) < 2:  # one run, or runs equal at these digits
        return median
    return f"{median} ({low}{DASH}{high})"


def render_source(doc: dict) -> str:
    machine, versions = doc["machine"], doc["versions"]
    shown = ", ".join(f"{name} {value}" for name, value in versions.items() if value)
    chart = repo_path(doc["_path"].with_suffix(".png"))
    lines = [
        f"From `{repo_path(doc['_path'])}` (chart: `{chart}`): "
        f"commit `{doc['commit'][:10]}`{' (with uncommitted changes)' if doc['dirty'] else ''}, "
        f"{doc['created']}; {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['ram_gib']} GiB RAM; {shown}.",
        "",
        f"    {doc['command']}",
        "",
        f"{doc['runs']} run(s); each figure is the median over the runs, with the min{DASH}max in "
        "brackets.",
    ]
    if warning := caveat(doc):
        lines += ["", f"{warning}`make {doc['kind']}` on a quiet machine replaces it."]
    return "\n".join(lines)


def render_table(doc: dict) -> str:
    lines = [
        "| row | unit | throughput | p50 s | p95 s | server CPU s per item | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in doc["rows"]:
        metrics = row["metrics"]
        cpu = next((metrics[name] for name in CPU_METRICS if name in metrics), None)
        errors = metrics.get("errors")
        total = sum(v for v in errors["values"] if v is not None) if errors else None
        lines.append(
            f"| {row['label']} | {row['unit']} | {figure(metrics['throughput'])} "
            f"| {figure(metrics.get('p50_ms'), 1e-3)} | {figure(metrics.get('p95_ms'), 1e-3)} "
            f"| {figure(cpu)} | {DASH if total is None else f'{total:g}'} |"
        )
    return "\n".join(lines)


def render_targets(doc: dict) -> str:
    lines = [f"| goal | measured (median, min{DASH}max) | |", "|---|---:|---|"]
    for name, target in doc["targets"].items():
        spread = doc["ratios"].get(name)
        verdict = met(spread["median"] if spread else None, target)
        status = {True: "met", False: "**not met**", None: "not measured"}[verdict]
        value = figure(spread)
        shown = value if value == DASH else f"{value} {TIMES}"
        lines.append(f"| {target['text']} | {shown} | {status} |")
    return "\n".join(lines)


def _row(doc: dict, row_id: str) -> dict:
    return next((row for row in doc["rows"] if row["id"] == row_id), {"metrics": {}})


def _throughput(doc: dict, row_id: str) -> str:
    return figure(_row(doc, row_id)["metrics"].get("throughput"))


def _fast_alone(doc: dict) -> str:
    """The bench config's row, where the run measured it (`--only` may leave it out)."""
    if not _row(doc, "bench@32")["metrics"]:
        return ""
    return f"the fast profile alone {_throughput(doc, 'bench@32')} and "


def render_summary(doc: dict) -> str:
    ratio = doc["ratios"].get
    if doc["kind"] == "bench":
        text = (
            f"At 32 clients (`/v1/score`, random ViT-B-32), `make run`'s config serves "
            f"{_throughput(doc, 'make-run@32')} req/s ({figure(ratio('make_run_over_naive_at_32'))}"
            f" {TIMES} the naive in-process open_clip pipeline, "
            f"{figure(ratio('make_run_over_baseline_at_32'))} {TIMES} the seed-style server), "
            f"{_fast_alone(doc)}`serve_config.fast-int8.yaml` "
            f"{_throughput(doc, 'fast-int8@32')} ({figure(ratio('fast_int8_over_naive_at_32'))} "
            f"{TIMES} the naive fp32 pipeline)."
        )
    else:
        cpu = figure(_row(doc, "clipfleet/1")["metrics"].get("cpu_s_per_image"))
        peer_cpu = figure(_row(doc, "infinity/1")["metrics"].get("cpu_s_per_image"))
        text = (
            f"Against infinity-emb on the same box, model directory and images: clipfleet "
            f"`/v1/embeddings` serves {_throughput(doc, 'clipfleet/1')} img/s to infinity's "
            f"{_throughput(doc, 'infinity/1')} with one image per request "
            f"({figure(ratio('clipfleet_over_infinity_1'))} {TIMES}; server CPU per image {cpu} s "
            f"vs {peer_cpu} s) and {figure(ratio('clipfleet_over_infinity_16'))} {TIMES} with 16 "
            "images "
            "per request."
        )
    return f"{caveat(doc)}{text} Source: `{repo_path(doc['_path'])}`."


def caveat(doc: dict) -> str:
    """A loud prefix for anything but a full run of three or more passes."""
    if doc["label"] == "full" and doc["runs"] >= 3:
        return ""
    seconds = doc["settings"].get("seconds", "?")
    return (
        f"**{doc['label'].upper()} RESULT, {doc['runs']} run(s) of {seconds:g} s: it validates "
        "the harness; not figures to quote.** "
    )


RENDERERS: dict[str, Callable[[dict], str]] = {
    "source": render_source,
    "table": render_table,
    "targets": render_targets,
    "summary": render_summary,
}


def render(key: str, docs: dict[str, dict | None]) -> str:
    kind, part = key.split(":", 1)
    if kind not in KINDS or part not in RENDERERS:
        raise ReportError(f"no generated region {key!r}: kinds {KINDS}, parts {sorted(RENDERERS)}")
    doc = docs.get(kind)
    if doc is None:
        return f"_No `{kind}` results committed yet: run `make {kind}`._"
    return RENDERERS[part](doc)


def regenerate(text: str, docs: dict[str, dict | None]) -> str:
    """`text` with every generated region rendered again; the rest unchanged."""
    opened = re.findall(r"<!-- generated:([\w-]+:[\w-]+) -->", text)
    closed = re.findall(r"<!-- /generated:([\w-]+:[\w-]+) -->", text)
    found = [match["key"] for match in REGION.finditer(text)]
    if sorted(opened) != sorted(found) or sorted(closed) != sorted(found):
        raise ReportError(f"unpaired generated-region markers: {opened} / {closed}")

    def replace(match: re.Match) -> str:
        body = render(match["key"], docs).rstrip("\n") + "\n"
        return f"{match['open']}{body}{match['close']}"

    return REGION.sub(replace, text)


def newest(folder: Path = RESULTS_DIR) -> dict[str, dict | None]:
    return {kind: latest(kind, folder) for kind in KINDS}


def stale(paths: tuple[Path, ...] = DOCS, folder: Path = RESULTS_DIR) -> list[str]:
    """The docs whose generated regions differ from what the results in `folder` give."""
    docs = newest(folder)
    return [
        repo_path(path) for path in paths if regenerate(path.read_text(), docs) != path.read_text()
    ]


def report_table(doc: dict) -> str:
    """A results document as the docs show it (printed by the benchmarks when they finish)."""
    parts = [render_table(doc)]
    if doc["targets"]:
        parts.append(render_targets(doc))
    return "\n\n".join(parts)


def publish(doc: dict, out: Path) -> Path:
    """Write a benchmark's results file and chart, and print its figures as the docs will."""
    path = write(doc, out)
    print(report_table(doc))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale docs")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.check:
        if found := stale(folder=args.results):
            sys.exit(f"stale generated figures in {found}: run `python -m loadtests.report`")
        print("the docs' generated figures match the results files")
        return
    docs = newest(args.results)
    for path in DOCS:
        text = path.read_text()
        updated = regenerate(text, docs)
        if updated != text:
            path.write_text(updated)
            print(f"rewrote the generated regions of {repo_path(path)}")


if __name__ == "__main__":
    main()

"""The PNG chart of a results file: throughput and p95 per row, median bars with min-max whiskers.

python -m loadtests.chart loadtests/results/bench-....json     # (re)draws the .png beside it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def group(row_id: str) -> str:
    """What a row belongs to, for its colour: the id up to its first / or @."""
    return row_id.replace("@", "/").split("/", 1)[0]


def _bars(axis, rows, groups: list[str], metric: str, scale: float, xlabel: str) -> None:
    labels, medians, low, high, colours = [], [], [], [], []
    for row in rows:
        value = row["metrics"].get(metric)
        if not value or value["median"] is None:
            continue
        # ids are short; the docs' table has the long labels
        labels.append(f"{row['id']} [{row['unit']}]" if metric == "throughput" else row["id"])
        medians.append(value["median"] * scale)
        low.append((value["median"] - value["min"]) * scale)
        high.append((value["max"] - value["median"]) * scale)
        colours.append(PALETTE[groups.index(group(row["id"])) % len(PALETTE)])
    positions = range(len(labels))
    axis.barh(positions, medians, xerr=[low, high], color=colours, ecolor="#333333", capsize=3)
    axis.margins(x=0.12)
    axis.set_yticks(list(positions), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel(xlabel)
    for position, value in zip(positions, medians, strict=True):
        axis.annotate(
            f"{value:.3g}", (value, position), xytext=(4, 0), textcoords="offset points",
            va="center", fontsize=7,
        )  # fmt: skip


def write_chart(doc: dict, path: Path) -> Path:
    rows = doc["rows"]
    with_p95 = [row for row in rows if (row["metrics"].get("p95_ms") or {}).get("median")]
    height = 1.2 + 0.32 * (len(rows) + len(with_p95))
    figure, axes = plt.subplots(
        2 if with_p95 else 1, 1, figsize=(8, height), squeeze=False,
        height_ratios=[len(rows), len(with_p95)] if with_p95 else None,
    )  # fmt: skip
    groups = list(dict.fromkeys(group(row["id"]) for row in rows))  # one colour per group
    xlabel = "throughput (median; whiskers: min-max of runs)"
    _bars(axes[0][0], rows, groups, "throughput", 1.0, xlabel)
    if with_p95:
        _bars(axes[1][0], with_p95, groups, "p95_ms", 1e-3, "p95 latency, s")
    machine = doc["machine"]
    figure.suptitle(
        f"{doc['kind']} ({doc['label']}): {doc['runs']} run(s), commit {doc['commit'][:7]}, "
        f"{doc['created']}\n{machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['ram_gib']} GiB",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    print(write_chart(json.loads(args.results.read_text()), args.results.with_suffix(".png")))


if __name__ == "__main__":
    main()

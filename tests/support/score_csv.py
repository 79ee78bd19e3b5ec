"""What `clipfleet score-csv` wrote: the rows of its output file."""

from __future__ import annotations

import csv


def read_output(path):
    with path.with_name(f"{path.stem}_with_scores.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))

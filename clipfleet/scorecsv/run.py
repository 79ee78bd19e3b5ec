"""score-csv's runs: one streamed pass, or --compare's two passes over disjoint images."""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from clipfleet.scorecsv.client import RetryPolicy, ScoreClient, client_for, scored_in_order
from clipfleet.scorecsv.rows import (
    Columns,
    InputError,
    Item,
    ResultWriter,
    in_partition,
    iter_items,
    read_columns,
    rows_already_written,
)

MAX_PAIRS_PER_REQUEST = 64  # the service's default limits.max_items


@dataclass
class Tally:
    """One mode's figures: rows, successes, wall time."""

    name: str
    rows: int = 0
    scored: int = 0
    seconds: float = 0.0

    def speed(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


async def score_into(
    args, columns: Columns, items: Iterable[Item], size: int, sink, total: int | None, name: str
) -> Tally:
    """Score `items` (`size` pairs per request), handing each to `sink` in input order."""
    tally = Tally(name)
    retry = RetryPolicy(retries=max(0, args.retries), max_wait_s=args.max_retry_wait)
    window = 2 * max(1, args.concurrency)
    async with client_for(args) as client:
        scorer = ScoreClient(client, columns, args.profile, args.concurrency, retry)
        started = time.perf_counter()
        with tqdm(total=total, desc=name, unit="row", disable=None) as bar:
            async for item in scored_in_order(scorer, items, size, window):
                sink(item)
                tally.rows += 1
                tally.scored += item.score is not None
                bar.update(1)
        tally.seconds = time.perf_counter() - started
    if scorer.retries_used:
        print(f"{name}: {scorer.retries_used} retries after 503/429")
    return tally


def report(tally: Tally) -> None:
    print(
        f"{tally.name.capitalize()} evaluation: {tally.scored}/{tally.rows} successful, "
        f"{tally.seconds:.2f}s, {tally.speed():.2f} images/sec"
    )


def compare(args, columns: Columns, output: Path, total: int, batch_size: int) -> int:
    """Single-pair requests on half the images, batch requests on the other half."""
    held_path = output.with_name(f"{output.stem}.single.partial.csv")
    tallies = []
    with held_path.open("w", newline="", encoding="utf-8") as handle:
        held_writer = csv.writer(handle)

        def hold(item: Item) -> None:
            kept = [item.row.get(name, "") for name in columns.output[:-2]]
            score = "" if item.score is None else repr(item.score)
            held_writer.writerow([item.index, *kept, score, item.error])

        singles = (i for i in iter_items(args.input) if in_partition(i, columns, 0))
        tallies.append(asyncio.run(score_into(args, columns, singles, 1, hold, None, "single")))
    report(tallies[0])
    writer = ResultWriter(output, columns, append=False)
    try:
        with held_path.open(newline="", encoding="utf-8") as handle:
            held = _Peekable(csv.reader(handle))

            def merge(item: Item) -> None:
                held.write_before(item.index, writer)
                writer.write(item)

            batches = (i for i in iter_items(args.input) if in_partition(i, columns, 1))
            tally = asyncio.run(
                score_into(args, columns, batches, batch_size, merge, None, "batch")
            )
            held.write_before(total, writer)
        tallies.append(tally)
    finally:
        writer.close()
        held_path.unlink(missing_ok=True)
    report(tallies[1])
    single, batch = tallies
    print(f"Single: {single.seconds:.2f}s ({single.speed():.2f} img/s, {single.rows} rows)")
    print(f"Batch:  {batch.seconds:.2f}s ({batch.speed():.2f} img/s, {batch.rows} rows)")
    if single.speed():
        print(f"Speedup: {batch.speed() / single.speed():.2f}x with batch (rows per second)")
    stats = args.input.with_name(f"{args.input.stem}_comparison_stats.csv")
    with stats.open("w", newline="", encoding="utf-8") as handle:
        stats_writer = csv.writer(handle)
        stats_writer.writerow(["mode", "rows", "successful", "seconds", "images_per_sec"])
        for tally in tallies:
            stats_writer.writerow(
                [
                    tally.name,
                    tally.rows,
                    tally.scored,
                    f"{tally.seconds:.3f}",
                    f"{tally.speed():.2f}",
                ]
            )
    print(f"Comparison statistics saved to: {stats}")
    print(f"Results saved to: {output}")
    scored = single.scored + batch.scored
    print(f"Successfully processed {scored}/{total} rows")
    return 0 if not writer.failures else 1


class _Peekable:
    """The held single-mode rows (index first), written back in input order."""

    def __init__(self, rows: Iterator[list[str]]) -> None:
        self._rows = rows
        self._head: list[str] | None = None

    def write_before(self, index: int, writer: ResultWriter) -> None:
        while True:
            if self._head is None:
                self._head = next(self._rows, None)
            if self._head is None or int(self._head[0]) >= index:
                return
            position, *cells = self._head
            self._head = None
            row = dict(zip(writer.columns.output, cells, strict=True))
            score = row.pop("clip_score")
            item = Item(int(position), row, float(score) if score else None, row.pop("error"))
            writer.write(item)


def score_csv(args) -> int:
    columns, total = read_columns(args.input)
    columns.image_root = getattr(args, "image_root", None)
    columns.max_image_bytes = getattr(args, "max_image_bytes", columns.max_image_bytes)
    output = args.output or args.input.with_name(f"{args.input.stem}_with_scores.csv")
    print(f"Processing: {args.input} ({total} rows; image={columns.image}, text={columns.text})")
    batch_size = min(max(1, args.batch_size), MAX_PAIRS_PER_REQUEST)
    if args.compare:
        if args.resume:
            raise InputError("--resume and --compare don't go together")
        return compare(args, columns, output, total, batch_size)
    start = rows_already_written(output, columns) if args.resume else 0
    if start:
        print(f"Resuming: {start} rows are already in {output}")
    writer = ResultWriter(output, columns, append=start > 0)
    try:
        items = iter_items(args.input, start)
        tally = asyncio.run(
            score_into(args, columns, items, batch_size, writer.write, total - start, "batch")
        )
    finally:
        writer.close()
    report(tally)
    print(f"Results saved to: {output}")
    print(f"Successfully processed {tally.scored}/{tally.rows} rows")
    return 0 if not writer.failures else 1

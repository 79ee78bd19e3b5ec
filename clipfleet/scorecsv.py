"""`clipfleet score-csv`: stream a CSV of (image, text) rows through /v1/score.

Memory is bounded by the concurrency window, not the CSV: rows are read as they are needed, an
image file is read (and base64-encoded) only when its request is about to be sent, and results
are written, in input order, as soon as the rows before them are done. At most `window` chunks
of `--batch-size` rows are in flight or waiting to be written.

Under load the client backs off: a 503 or 429 is retried up to `--retries` times, waiting the
server's Retry-After (capped at `--max-retry-wait`; exponential backoff without one), and every
request waits out the latest Retry-After, so the whole run slows down, not only one request.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import itertools
import random
import sys
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

IMAGE_COLUMNS = ("image_input", "image_url", "url", "image", "image_path", "path")
TEXT_COLUMNS = ("text_prompt", "caption", "text", "prompt")
RESULT_COLUMNS = ("clip_score", "error")
MAX_PAIRS_PER_REQUEST = 64  # the service's default limits.max_items
RETRY_STATUSES = frozenset({429, 503})
MAX_PRINTED_FAILURES = 50


class InputError(Exception):
    """The CSV can't be used (missing, empty, no usable columns, an output that doesn't fit)."""


class AuthError(Exception):
    """The server refused the API key (401/403): every row would fail, so the run stops."""


@dataclass
class Item:
    """One CSV row on its way through: its position, its cells, and its outcome."""

    index: int
    row: dict[str, str]
    score: float | None = None
    error: str = ""


@dataclass
class Columns:
    fieldnames: list[str]
    image: str
    text: str
    folder: Path

    @property
    def output(self) -> list[str]:
        kept = [name for name in self.fieldnames if name not in RESULT_COLUMNS]
        return [*kept, *RESULT_COLUMNS]


@dataclass
class Tally:
    """One mode's figures: rows, successes, wall time."""

    name: str
    rows: int = 0
    scored: int = 0
    seconds: float = 0.0

    def speed(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def pick_column(fieldnames: list[str], candidates: tuple[str, ...], what: str) -> str:
    by_lower = {name.strip().lower(): name for name in fieldnames}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    raise InputError(f"no {what} column: expected one of {', '.join(candidates)}")


def open_csv(path: Path):
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def read_columns(path: Path) -> tuple[Columns, int]:
    """The columns to use and the number of data rows (one streaming pass)."""
    with open_csv(path) as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        count = sum(1 for _ in reader)
    if not count:
        raise InputError(f"{path} has no data rows")
    image = pick_column(fieldnames, IMAGE_COLUMNS, "image")
    text = pick_column(fieldnames, TEXT_COLUMNS, "text")
    return Columns(fieldnames, image, text, path.parent), count


def iter_items(path: Path, start: int = 0) -> Iterator[Item]:
    with open_csv(path) as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index >= start:
                yield Item(index, row)


def image_ref(value: str, folder: Path) -> dict:
    if value.startswith(("http://", "https://")):
        return {"url": value}
    path = Path(value).expanduser()
    data = (path if path.is_absolute() else folder / path).read_bytes()
    return {"base64": base64.b64encode(data).decode("ascii")}


def score_pair(item: Item, columns: Columns) -> dict | None:
    """The v1 score pair for a row, or None with `item.error` saying why it can't be sent."""
    image = (item.row.get(columns.image) or "").strip()
    text = (item.row.get(columns.text) or "").strip()
    if not image or not text:
        item.error = f"empty {columns.image if not image else columns.text}"
        return None
    try:
        return {"image": image_ref(image, columns.folder), "text": text}
    except OSError as exc:
        item.error = f"cannot read image file: {exc.strerror or exc}"
        return None


def error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        where = f" ({error['param']})" if error.get("param") else ""
        return f"HTTP {response.status_code} {error['type']}: {error['message']}{where}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def retry_after_s(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # an HTTP date or garbage: use the backoff


@dataclass
class RetryPolicy:
    retries: int = 5
    max_wait_s: float = 30.0
    base_backoff_s: float = 0.5

    def wait_s(self, attempt: int, response: httpx.Response) -> float:
        server = retry_after_s(response)
        backoff = self.base_backoff_s * 2**attempt * (0.5 + random.random())
        return min(server if server is not None else backoff, self.max_wait_s)


class ScoreClient:
    """/v1/score with bounded concurrency, shared back-off and per-row fallback."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        columns: Columns,
        profile: str | None,
        concurrency: int,
        retry: RetryPolicy,
    ) -> None:
        self.client = client
        self.columns = columns
        self.profile = profile
        self.limit = asyncio.Semaphore(max(1, concurrency))
        self.retry = retry
        self.resume_at = 0.0  # monotonic time before which no request is sent (Retry-After)
        self.retries_used = 0

    async def _post(self, body: dict) -> httpx.Response | str:
        """The final response (after retries of 503/429), or why the request failed."""
        for attempt in range(self.retry.retries + 1):
            delay = self.resume_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await self.client.post("/v1/score", json=body)
            except httpx.HTTPError as exc:
                return f"request failed: {type(exc).__name__}: {exc}"
            if response.status_code in (401, 403):
                raise AuthError(error_text(response))
            if response.status_code not in RETRY_STATUSES or attempt == self.retry.retries:
                return response
            self.retries_used += 1
            wait = self.retry.wait_s(attempt, response)
            self.resume_at = max(self.resume_at, time.monotonic() + wait)
        raise AssertionError("unreachable")

    async def score(self, items: list[Item]) -> list[Item]:
        """Fills in each item's score or error; returns the items."""
        async with self.limit:
            pairs = [score_pair(item, self.columns) for item in items]
            sendable = [item for item, pair in zip(items, pairs, strict=True) if pair]
            if not sendable:
                return items
            body: dict = {"pairs": [pair for pair in pairs if pair]}
            if self.profile:
                body["profile"] = self.profile
            outcome = await self._post(body)
            del body, pairs  # the images' base64 is not kept past the request
        if isinstance(outcome, httpx.Response) and outcome.status_code == 200:
            results = outcome.json()["results"]
            for item, result in zip(sendable, results, strict=True):
                item.score = result["clip_score"]
            return items
        row_level = isinstance(outcome, httpx.Response) and outcome.status_code < 500
        if row_level and outcome.status_code not in RETRY_STATUSES and len(sendable) > 1:
            # One bad row fails the whole request: send its rows one by one to find it.
            await asyncio.gather(*(self.score([item]) for item in sendable))
            return items
        message = outcome if isinstance(outcome, str) else error_text(outcome)
        for item in sendable:
            item.error = message
        return items


def chunked(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


async def scored_in_order(
    scorer: ScoreClient, items: Iterable[Item], size: int, window: int
) -> AsyncIterator[Item]:
    """Items with their outcome, in input order; at most `window` chunks started and unwritten."""
    pending: deque[asyncio.Task] = deque()
    try:
        for chunk in chunked(items, size):
            pending.append(asyncio.create_task(scorer.score(chunk)))
            while len(pending) >= window:
                for item in await pending.popleft():
                    yield item
        while pending:
            for item in await pending.popleft():
                yield item
    finally:
        for task in pending:
            task.cancel()


class ResultWriter:
    """Output rows as they come, each flushed, so an interrupted run leaves whole rows."""

    def __init__(self, path: Path, columns: Columns, append: bool) -> None:
        self.handle = path.open("a" if append else "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=columns.output)
        self.columns = columns
        if not append:
            self.writer.writeheader()
        self.failures_printed = 0
        self.failures = 0

    def write(self, item: Item) -> None:
        kept = {name: item.row.get(name, "") for name in self.columns.output[:-2]}
        score = "" if item.score is None else repr(item.score)
        self.writer.writerow({**kept, "clip_score": score, "error": item.error})
        self.handle.flush()  # an interrupted run leaves whole rows for --resume
        if item.error:
            self.failures += 1
            if self.failures_printed < MAX_PRINTED_FAILURES:
                self.failures_printed += 1
                print(f"row {item.index + 1}: {item.error}", file=sys.stderr)

    def close(self) -> None:
        if self.failures > self.failures_printed:
            more = self.failures - self.failures_printed
            print(f"... and {more} more failed rows (see the error column)", file=sys.stderr)
        self.handle.close()


def rows_already_written(path: Path, columns: Columns) -> int:
    """For --resume: the whole rows in an earlier output (a torn last line is cut off)."""
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        if size and _last_byte(handle, size) != b"\n":
            handle.truncate(_after_last_newline(handle, size))
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return 0
        if header != columns.output:
            raise InputError(f"{path} has other columns than this run writes; can't resume it")
        return sum(1 for _ in reader)


def _last_byte(handle, size: int) -> bytes:
    handle.seek(size - 1)
    return handle.read(1)


def _after_last_newline(handle, size: int) -> int:
    block = 64 * 1024
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        position = handle.read(end - start).rfind(b"\n")
        if position >= 0:
            return start + position + 1
        end = start
    return 0


def in_partition(item: Item, columns: Columns, partition: int) -> bool:
    """--compare: each image goes to one mode only, so neither is served from the other's
    embedding cache (the same image in several rows stays in one mode)."""
    image = (item.row.get(columns.image) or "").strip()
    return zlib.crc32(image.encode()) % 2 == partition


def client_for(args) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max(1, args.concurrency))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    return httpx.AsyncClient(
        base_url=args.url, timeout=args.timeout, limits=limits, headers=headers
    )


async def score_into(
    args, columns: Columns, items: Iterable[Item], size: int, sink, total: int, name: str
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
        tallies.append(asyncio.run(score_into(args, columns, singles, 1, hold, total, "single")))
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
                score_into(args, columns, batches, batch_size, merge, total, "batch")
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

"""score-csv's rows: the input CSV streamed in, the output written as results come (and found
again by --resume), and the request pair each row becomes."""

from __future__ import annotations

import base64
import csv
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clipfleet.config import FetchLimits
from clipfleet.images.localfiles import ImageFileError, read_image_file

IMAGE_COLUMNS = ("image_input", "image_url", "url", "image", "image_path", "path")
TEXT_COLUMNS = ("text_prompt", "caption", "text", "prompt")
RESULT_COLUMNS = ("clip_score", "error")
MAX_PRINTED_FAILURES = 50


# What score-csv reads of a local image file: the service's own limit (fetch.max_bytes).
MAX_IMAGE_BYTES = FetchLimits().max_bytes
# A cell a spreadsheet would run as a formula starts with one of these (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def inert(cell: str | None) -> str | None:
    """A cell a spreadsheet shows as text, never runs: one starting like a formula gets a
    leading `'` (OWASP's advice); a plain number such as -0.5 is left as it is."""
    if cell and cell.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


class InputError(Exception):
    """The CSV can't be used (missing, empty, no usable columns, an output that doesn't fit)."""


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
    folder: Path  # the input's: the default image root
    image_root: Path | None = None  # --image-root: local images are read only under it
    max_image_bytes: int = MAX_IMAGE_BYTES

    @property
    def root(self) -> Path:
        return self.image_root or self.folder

    @property
    def output(self) -> list[str]:
        kept = [name for name in self.fieldnames if name not in RESULT_COLUMNS]
        return [*kept, *RESULT_COLUMNS]


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


def image_ref(value: str, root: Path, max_bytes: int = MAX_IMAGE_BYTES) -> dict:
    """An http(s) URL as is, or a local file's base64: only a regular file under `root`
    (clipfleet.images.localfiles), else ImageFileError."""
    if value.startswith(("http://", "https://")):
        return {"url": value}
    data = read_image_file(root, value, max_bytes)
    return {"base64": base64.b64encode(data).decode("ascii")}


def score_pair(item: Item, columns: Columns) -> dict | None:
    """The v1 score pair for a row, or None with `item.error` saying why it can't be sent."""
    image = (item.row.get(columns.image) or "").strip()
    text = (item.row.get(columns.text) or "").strip()
    if not image or not text:
        item.error = f"empty {columns.image if not image else columns.text}"
        return None
    try:
        return {"image": image_ref(image, columns.root, columns.max_image_bytes), "text": text}
    except ImageFileError as exc:
        item.error = str(exc)
        return None


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
        row = {**kept, "clip_score": score, "error": item.error}
        self.writer.writerow({name: inert(value) for name, value in row.items()})
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

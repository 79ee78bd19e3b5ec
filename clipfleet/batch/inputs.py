"""Find and read a batch job's input: a CSV, JSON Lines or Parquet file or folder, or a folder
of images, on any filesystem pyarrow understands (local paths, s3://, gs://, hdfs://...).

Only the table is read here (paths, URLs, captions and whatever other columns there are), never
the images: those are read by the CPU decode tasks. Column names default as in `score-csv`.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from clipfleet.scorecsv.rows import IMAGE_COLUMNS, TEXT_COLUMNS, InputError, pick_column

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
TABLE_FORMATS = {
    ".csv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
IMAGE_DIR_COLUMN = "path"
FORMATS = ("auto", "csv", "json", "parquet", "images")


@dataclass(frozen=True)
class Location:
    """A path on a pyarrow filesystem (picklable: it travels to the decode tasks)."""

    filesystem: pafs.FileSystem
    path: str

    @classmethod
    def parse(cls, text: str) -> Location:
        if "://" in text:
            try:
                filesystem, path = pafs.FileSystem.from_uri(text)
            except (ValueError, OSError, pa.ArrowException) as exc:
                raise InputError(f"cannot open {text}: {exc}") from exc
            return cls(filesystem, path.rstrip("/") or "/")
        return cls(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text)))

    def join(self, relative: str) -> str:
        return posixpath.join(self.path, relative)

    def contains(self, other: Location) -> bool:
        same = type(self.filesystem) is type(other.filesystem)
        return same and (other.path + "/").startswith(self.path.rstrip("/") + "/")


@dataclass(frozen=True)
class InputTable:
    table: pa.Table
    base: Location  # the image root: relative paths start there; nothing outside it is read
    image_column: str | None
    text_column: str | None
    format: str


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _visible(path: str, root: str) -> bool:
    parts = posixpath.relpath(path, root).split("/")
    return not any(part.startswith((".", "_")) for part in parts)


def list_files(location: Location, exclude: Location | None = None) -> list[str]:
    selector = pafs.FileSelector(location.path, recursive=True)
    files = [
        info.path
        for info in location.filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and _visible(info.path, location.path)
    ]
    if exclude is not None:
        files = [path for path in files if not exclude.contains(Location(exclude.filesystem, path))]
    return sorted(files)


def choose_format(files: list[str], requested: str, where: str) -> tuple[str, list[str]]:
    """The input's format and its data files; tables win over images in a mixed folder."""
    if requested == "images":
        return "images", [f for f in files if _extension(f) in IMAGE_EXTENSIONS]
    if requested != "auto":
        wanted = {ext for ext, fmt in TABLE_FORMATS.items() if fmt == requested}
        return requested, [f for f in files if _extension(f) in wanted] or files
    tables = [f for f in files if _extension(f) in TABLE_FORMATS]
    formats = {TABLE_FORMATS[_extension(f)] for f in tables}
    if len(formats) > 1:
        raise InputError(f"{where} mixes table formats {sorted(formats)}; pass --format")
    if formats:
        return formats.pop(), tables
    images = [f for f in files if _extension(f) in IMAGE_EXTENSIONS]
    if not images:
        raise InputError(f"{where} has no CSV, JSON Lines, Parquet or image files")
    return "images", images


def _file_format(fmt: str) -> pads.FileFormat:
    if fmt == "csv":
        return pads.CsvFileFormat()
    if fmt == "json":
        return pads.JsonFileFormat()
    return pads.ParquetFileFormat()


def read_table(location: Location, fmt: str, files: list[str]) -> pa.Table:
    if fmt == "images":
        relative = [posixpath.relpath(path, location.path) for path in files]
        return pa.table({IMAGE_DIR_COLUMN: pa.array(relative, pa.string())})
    try:
        dataset = pads.dataset(files, format=_file_format(fmt), filesystem=location.filesystem)
        return dataset.to_table()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {fmt} input {location.path}: {exc}") from exc


def pick_or_none(table: pa.Table, given: str | None, defaults: tuple[str, ...], what: str):
    if given:
        if given not in table.column_names:
            raise InputError(f"no column {given!r}; the input has {table.column_names}")
        return given
    try:
        return pick_column(table.column_names, defaults, what)
    except InputError:
        return None


def as_strings(table: pa.Table, column: str | None) -> pa.Table:
    """Paths and captions are text even where the reader inferred numbers (a caption `42`)."""
    if column is None or pa.types.is_string(table.schema.field(column).type):
        return table
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, table[column].cast(pa.string()))


def load_input(
    text: str,
    fmt: str = "auto",
    image_column: str | None = None,
    text_column: str | None = None,
    exclude: Location | None = None,
) -> InputTable:
    """Read `--input`; the image and text columns are None where the input has none."""
    location = Location.parse(text)
    info = location.filesystem.get_file_info(location.path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input {text} does not exist")
    if info.type == pafs.FileType.Directory:
        fmt, files = choose_format(list_files(location, exclude), fmt, text)
        base = location
    else:
        fmt = fmt if fmt != "auto" else TABLE_FORMATS.get(_extension(location.path), "")
        if not fmt:
            raise InputError(f"cannot tell the format of {text} from its name; pass --format")
        files = [location.path]
        base = Location(location.filesystem, posixpath.dirname(location.path))
    if not files:
        raise InputError(f"input {text} has no {fmt} files")
    table = read_table(base, fmt, files)
    if table.num_rows == 0:
        raise InputError(f"input {text} has no rows")
    image = pick_or_none(table, image_column, IMAGE_COLUMNS, "image")
    caption = pick_or_none(table, text_column, TEXT_COLUMNS, "text")
    table = as_strings(as_strings(table, image), caption)
    return InputTable(table, base, image, caption, fmt)

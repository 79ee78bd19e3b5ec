"""The output dataset: one Parquet part file per shard of input rows, written atomically.

Shard k holds input rows [k * shard_rows, (k + 1) * shard_rows) in input order, so a rerun with
`--resume` knows exactly which rows are done: those of the part files that exist. A part file
is written under a temporary name and renamed when complete, so a job killed midway leaves
only whole shards (and maybe a temporary file, removed on resume); every row is written once.
`_job.json` records what the parts were made from, and a resume with other settings is refused.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from clipfleet.batch.inputs import Location
from clipfleet.batch.stages import ROW_ID, SHARD

JOB_FILE = "_job.json"
TMP_PREFIX = "_tmp-"


class OutputError(ValueError):
    """The output folder can't be used (not empty without --resume, another job's parts)."""


def part_name(shard: int) -> str:
    return f"part-{shard:06d}.parquet"


def shard_of(name: str) -> int | None:
    if name.startswith("part-") and name.endswith(".parquet"):
        digits = name.removeprefix("part-").removesuffix(".parquet")
        return int(digits) if digits.isdigit() else None
    return None


def _names(location: Location) -> list[str]:
    selector = pafs.FileSelector(location.path, allow_not_found=True)
    return [posixpath.basename(info.path) for info in location.filesystem.get_file_info(selector)]


def prepare_output(location: Location, job: dict, resume: bool) -> set[int]:
    """Create or check the output folder; the shards already written (resume only)."""
    filesystem = location.filesystem
    names = _names(location)
    done = {shard for shard in map(shard_of, names) if shard is not None}
    if names and not resume:
        raise OutputError(
            f"output {location.path} is not empty; pass --resume to finish that job, or choose "
            "a new folder"
        )
    if resume and JOB_FILE in names:
        with filesystem.open_input_stream(location.join(JOB_FILE)) as handle:
            previous = json.loads(handle.read())
        if previous != job:
            changed = sorted(key for key in {*job, *previous} if job.get(key) != previous.get(key))
            raise OutputError(
                f"--resume: this job differs from the one in {location.path}: {', '.join(changed)}"
            )
    elif done:
        raise OutputError(f"output {location.path} has part files but no {JOB_FILE}")
    filesystem.create_dir(location.path, recursive=True)
    for name in names:
        if name.startswith(TMP_PREFIX):  # a part a killed job was still writing
            filesystem.delete_file(location.join(name))
    with filesystem.open_output_stream(location.join(JOB_FILE)) as handle:
        handle.write(json.dumps(job, indent=2, sort_keys=True).encode())
    return done


class ShardWriter:
    """Collects result batches per shard; writes a shard's part file once all its rows are in."""

    def __init__(self, location: Location, expected: dict[int, int]) -> None:
        self.location = location
        self.expected = dict(expected)  # shard -> rows it must hold
        self.pending: dict[int, list[pa.Table]] = defaultdict(list)
        self.received: dict[int, int] = defaultdict(int)
        self.rows = 0
        self.failed = 0

    def add(self, batch: pa.Table) -> None:
        shards = batch[SHARD]
        for shard in pc.unique(shards).to_pylist():
            part = batch.filter(pc.equal(shards, shard))
            self.pending[shard].append(part)
            self.received[shard] += part.num_rows
            if self.received[shard] == self.expected[shard]:
                self._write(shard)
            elif self.received[shard] > self.expected[shard]:
                raise RuntimeError(f"shard {shard} got more rows than it has")

    def _write(self, shard: int) -> None:
        parts = self.pending.pop(shard)
        table = pa.concat_tables(parts, promote_options="permissive").sort_by(ROW_ID)
        table = table.drop_columns([ROW_ID, SHARD])
        final = self.location.join(part_name(shard))
        temporary = self.location.join(f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet")
        pq.write_table(table, temporary, filesystem=self.location.filesystem)
        self.location.filesystem.move(temporary, final)
        self.rows += table.num_rows
        self.failed += table.num_rows - table["error"].null_count
        del self.expected[shard]

    @property
    def unfinished(self) -> list[int]:
        return sorted(self.expected)

"""One batch job: input table -> shards -> Ray Data (decode tasks, model actor pool) -> parts."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa

from clipfleet.batch.inputs import InputTable, Location
from clipfleet.batch.output import ShardWriter, prepare_output
from clipfleet.batch.settings import JobSettings
from clipfleet.batch.stages import ROW_ID, SHARD, DecodeTask, ModelActor, decode_batch
from clipfleet.config import FetchLimits, random_weights_enabled

RESULT_COLUMNS = ("clip_score", "embedding", "embedding_space", "tags", "model", "error")


@dataclass
class Summary:
    rows: int  # rows written by this run
    failed: int
    skipped: int  # rows already written by an earlier run (--resume)
    seconds: float
    first_row_seconds: float | None  # from the start to the first written part
    output: str

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def line(self, mode: str) -> str:
        resumed = f", {self.skipped} already done" if self.skipped else ""
        return (
            f"clipfleet batch {mode}: {self.rows} rows ({self.failed} failed{resumed}) in "
            f"{self.seconds:.1f} s, {self.rows_per_s:.1f} rows/s -> {self.output}"
        )


def job_record(settings: JobSettings, source: InputTable, input_text: str, shard_rows: int):
    """What must not change between a run and its --resume."""
    record = {
        "mode": settings.mode,
        "input": input_text,
        "format": source.format,
        "rows": source.table.num_rows,
        "shard_rows": shard_rows,
        "profile": settings.profile,
        "variant": settings.variant,
        "model": settings.model_label,
        "image_column": source.image_column if settings.needs_image else None,
        "text_column": source.text_column if settings.needs_text else None,
    }
    if settings.tag is not None:
        record["tag"] = {
            "labels": list(settings.tag.labels),
            "prompt_template": settings.tag.prompt_template,
            "top_k": settings.tag.top_k,
        }
    return record


def connect(address: str | None) -> None:
    """An existing cluster (--address or RAY_ADDRESS), else a local Ray on loopback."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")


def blocks(table: pa.Table, todo: list[int], shard_rows: int, block_rows: int) -> list[pa.Table]:
    """The unfinished shards' rows, with row id and shard, in blocks of block_rows."""
    row_ids = np.arange(table.num_rows, dtype=np.int64)
    table = table.append_column(ROW_ID, pa.array(row_ids))
    table = table.append_column(SHARD, pa.array(row_ids // shard_rows))
    found = []
    for shard in todo:
        start = shard * shard_rows
        stop = min(start + shard_rows, table.num_rows)
        for block_start in range(start, stop, block_rows):
            found.append(table.slice(block_start, min(block_rows, stop - block_start)))
    return found


def run_job(
    settings: JobSettings,
    source: InputTable,
    input_text: str,
    output: Location,
    shard_rows: int,
    resume: bool,
    address: str | None = None,
    decode_cpus: float = 1.0,
) -> Summary:
    started = time.perf_counter()
    table = source.table.drop_columns(
        [name for name in RESULT_COLUMNS if name in source.table.column_names]
    )
    source = InputTable(table, source.base, source.image_column, source.text_column, source.format)
    done = prepare_output(output, job_record(settings, source, input_text, shard_rows), resume)
    shards = range((table.num_rows + shard_rows - 1) // shard_rows)
    todo = [shard for shard in shards if shard not in done]
    expected = {s: min(shard_rows, table.num_rows - s * shard_rows) for s in todo}
    writer = ShardWriter(output, expected)
    first_row = None
    if todo:
        dataset = build_dataset(settings, source, todo, shard_rows, address, decode_cpus)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
            if first_row is None and writer.rows:
                first_row = time.perf_counter() - started
    if writer.unfinished:
        raise RuntimeError(f"shards {writer.unfinished} got fewer rows than they have")
    return Summary(
        rows=writer.rows,
        failed=writer.failed,
        skipped=table.num_rows - sum(expected.values()),
        seconds=time.perf_counter() - started,
        first_row_seconds=first_row,
        output=output.path,
    )


def decode_resources(num_cpus: float) -> dict:
    return {"num_cpus": num_cpus}


def service_decode_limits(settings: JobSettings) -> FetchLimits:
    """The limits the service decodes this model's images with: straight to its input square
    where its preprocessing keeps one (clipfleet.models.geometry), so the job's vectors are the
    service's, in the same embedding space. Asked of the model itself, loaded once here."""
    from clipfleet.models.clip import load_clip_model
    from clipfleet.models.device import choose_device

    model = load_clip_model(settings.spec, choose_device("cpu"), random_weights_enabled())
    geometry = model.input_geometry()
    return geometry.limits(settings.args.fetch) if geometry else settings.args.fetch


def build_dataset(settings, source, todo, shard_rows, address, decode_cpus):
    import ray
    import ray.data

    connect(address)
    limits = settings.args.fetch
    if settings.needs_image:  # in a worker: the model's memory goes with it
        limits = ray.get(ray.remote(service_decode_limits).remote(settings))
    plan = DecodeTask(
        base=source.base,
        image_column=source.image_column if settings.needs_image else None,
        text_column=source.text_column if settings.needs_text else None,
        limits=limits,
        max_text_chars=settings.args.limits.max_text_chars,
    )
    sizing = settings.sizing
    text_column = plan.text_column
    dataset = ray.data.from_arrow(blocks(source.table, todo, shard_rows, settings.batch_size))
    dataset = dataset.map_batches(
        decode_batch,
        fn_kwargs={"plan": plan},
        batch_format="pyarrow",
        batch_size=None,
        # A remote-args function keeps Ray Data from fusing this task into the model actors
        # (it fuses operators whose resources match): decoding must not occupy a GPU actor.
        ray_remote_args_fn=partial(decode_resources, decode_cpus),
    )
    return dataset.map_batches(
        ModelActor,
        fn_constructor_kwargs={"settings": settings, "text_column": text_column},
        batch_format="pyarrow",
        batch_size=settings.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=sizing.min_actors, max_size=sizing.max_actors),
        num_cpus=sizing.num_cpus,
        num_gpus=sizing.num_gpus or None,
    )

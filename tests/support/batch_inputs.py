"""Inputs for batch-job tests: a serve config over the tiny models, images and captions on disk
in every input format, with one bad row (a file that is not an image)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from clipfleet.config import AppArgs
from tests.support.images import image_bytes

CAPTIONS = ["a red square", "a photo of a cat", "noise", "a blue sky", "a dog", "a tree"]
BAD_IMAGE = "broken.jpg"


def write_config(path: Path, args: AppArgs, encoder: dict | None = None) -> Path:
    """A serve config whose app args are `args`; `encoder`: clip_fast's deployment options."""
    deployments = [{"name": "clip_fast", **(encoder or {})}]
    config = {
        "applications": [
            {
                "name": "clipfleet",
                "import_path": "pipelines.app:build_app",
                "args": args.model_dump(mode="json"),
                "deployments": deployments,
            }
        ]
    }
    path.write_text(yaml.safe_dump(config))
    return path


def write_images(folder: Path, count: int) -> list[str]:
    """JPEGs and PNGs of different sizes; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        fmt = "PNG" if index % 3 == 2 else "JPEG"
        name = f"img{index:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
        width, height = 80 + 13 * index, 64 + 7 * (index % 5)
        (folder / name).write_bytes(image_bytes(width, height, fmt=fmt, seed=index))
        names.append(name)
    return names


def pairs_table(folder: Path, count: int, bad_row: int | None = 2) -> pa.Table:
    """image (relative path) + caption + an id column; row `bad_row` is not an image."""
    names = [f"images/{name}" for name in write_images(folder / "images", count)]
    if bad_row is not None:
        (folder / "images" / BAD_IMAGE).write_bytes(b"this is not an image")
        names[bad_row] = f"images/{BAD_IMAGE}"
    captions = [CAPTIONS[i % len(CAPTIONS)] + f" {i}" for i in range(count)]
    return pa.table({"id": list(range(count)), "image": names, "caption": captions})


def write_table(table: pa.Table, path: Path) -> Path:
    """As CSV, JSON Lines or Parquet, by the path's extension."""
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    else:
        pq.write_table(table, path)
    return path

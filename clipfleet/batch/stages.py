"""The two stages of a batch job: a CPU decode task and a model actor.

decode: read each row's image (a file on the input's filesystem, or an http(s) URL through the
service's SSRF-guarded UrlFetcher) and decode it with the service's own decoder (same limits,
same JPEG draft decoding, shorter side shrunk to fetch.ship_shortest_side), so a row whose image
is missing, not an image or too large gets its `error` here and never reaches a model.

ModelActor: loads the profile's CLIP through clipfleet's model classes (the service's encoders
use the very same), preprocesses each decoded image with the model's own transform, runs one
batched forward per batch, and scores (`clipfleet.scoring`, the service's maths).
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import fs as pafs

from clipfleet.api.limits import render_prompt
from clipfleet.batch.inputs import Location
from clipfleet.batch.settings import JobSettings
from clipfleet.config import FetchLimits, random_weights_enabled
from clipfleet.errors import ClipfleetError
from clipfleet.images.decode import decode_image
from clipfleet.images.fetch import UrlFetcher
from clipfleet.images.localfiles import ImageFileError, read_image_file
from clipfleet.models.embedding_space import embedding_space, stamp
from clipfleet.scoring import clip_scores, semantic_tags

PIXELS, SHAPE, ERROR = "__pixels", "__shape", "__error"
ROW_ID, SHARD = "__row_id", "__shard"
URL_PREFIXES = ("http://", "https://")
TAG_TYPE = pa.list_(pa.struct([("label", pa.string()), ("confidence", pa.float64())]))


@dataclass(frozen=True)
class DecodeTask:
    """What the decode task needs to know (it is pickled to every task)."""

    base: Location  # the image root: relative paths start there, and no file outside it is read
    image_column: str | None
    text_column: str | None
    limits: FetchLimits
    max_text_chars: int


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ClipfleetError):
        return f"{exc.type}: {exc.message}"
    if isinstance(exc, ImageFileError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "image file not found"
    return f"{type(exc).__name__}: {exc}"


def read_file(root: Location, value: str, limits: FetchLimits) -> bytes:
    """A regular file under `root` (--image-root), at most fetch.max_bytes: on the local
    filesystem through clipfleet.images.localfiles (symlinks resolved); on others, its normalised
    path under the root."""
    if isinstance(root.filesystem, pafs.LocalFileSystem):
        return read_image_file(Path(root.path), value, limits.max_bytes)
    path = posixpath.normpath(value if value.startswith("/") else root.join(value))
    if not root.contains(Location(root.filesystem, path)):
        raise ImageFileError(value, f"it is outside the image root {root.path} (--image-root)")
    info = root.filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        missing = info.type == pafs.FileType.NotFound
        raise ImageFileError(value, "not found" if missing else "not a regular file")
    if info.size is not None and info.size > limits.max_bytes:
        raise ImageFileError(value, f"larger than {limits.max_bytes} bytes")
    with root.filesystem.open_input_file(path) as handle:
        data = handle.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageFileError(value, f"larger than {limits.max_bytes} bytes")
    return data


async def download_all(urls: dict[int, str], limits: FetchLimits) -> dict[int, bytes | Exception]:
    fetcher = UrlFetcher(limits)
    try:
        results = await asyncio.gather(
            *(fetcher.download(url) for url in urls.values()), return_exceptions=True
        )
    finally:
        await fetcher.close()
    return dict(zip(urls, results, strict=True))


def _text_error(text: str | None, column: str, limit: int) -> str | None:
    if not text or not text.strip():
        return f"empty {column}"
    if len(text) > limit:
        return f"text is {len(text)} characters; the limit is {limit}"
    return None


def decode_batch(table: pa.Table, plan: DecodeTask) -> pa.Table:
    """Add the decoded pixels (raw HxWx3 bytes + shape) and any per-row error."""
    rows = table.num_rows
    errors: list[str | None] = [None] * rows
    if plan.text_column:
        for index, text in enumerate(table[plan.text_column].to_pylist()):
            errors[index] = _text_error(text, plan.text_column, plan.max_text_chars)
    pixels: list[bytes | None] = [None] * rows
    shapes: list[list[int] | None] = [None] * rows
    if plan.image_column:
        values = table[plan.image_column].to_pylist()
        data: dict[int, bytes | Exception] = {}
        urls = {}
        for index, value in enumerate(values):
            value = (value or "").strip()
            if errors[index]:
                continue
            if not value:
                errors[index] = f"empty {plan.image_column}"
            elif value.startswith(URL_PREFIXES):
                urls[index] = value
            else:
                try:
                    data[index] = read_file(plan.base, value, plan.limits)
                except Exception as exc:  # any unreadable file is that row's error
                    data[index] = exc
        if urls:
            data.update(asyncio.run(download_all(urls, plan.limits)))
        for index, item in data.items():
            try:
                if isinstance(item, Exception):
                    raise item
                image = decode_image(item, plan.limits)
            except Exception as exc:  # never stop the job for one row
                errors[index] = describe_error(exc)
                continue
            pixels[index], shapes[index] = image.tobytes(), list(image.shape)
    return (
        table.append_column(PIXELS, pa.array(pixels, pa.binary()))
        .append_column(SHAPE, pa.array(shapes, pa.list_(pa.int32())))
        .append_column(ERROR, pa.array(errors, pa.string()))
    )


def embedding_array(vectors: dict[int, np.ndarray], rows: int, dim: int) -> pa.Array:
    """A fixed_size_list<float32>[dim] column, null where the row has no vector."""
    flat = np.zeros((rows, dim), dtype=np.float32)
    for index, vector in vectors.items():
        flat[index] = vector
    missing = pa.array([index not in vectors for index in range(rows)], pa.bool_())
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=missing)


class ModelActor:
    """One loaded CLIP; `__call__` maps a decoded batch to its results (Ray Data actor)."""

    def __init__(self, settings: JobSettings, text_column: str | None) -> None:
        from clipfleet.models.clip import load_clip_model
        from clipfleet.models.device import choose_device, set_torch_threads
        from clipfleet.models.onnx_runtime import apply_runtime

        set_torch_threads(settings.sizing.torch_threads)
        self.settings = settings
        self.text_column = text_column
        model = load_clip_model(settings.spec, choose_device(), random_weights_enabled())
        self.model = apply_runtime(model, settings.spec)  # the service's runtime: its vectors
        # decoded on the CPU here, whatever fetch.gpu_decode says for the service
        model_space = stamp(self.model)["model_space"]
        self.space = embedding_space(model_space, settings.args.fetch, gpu_decode=False)
        self.label_vectors = None
        if settings.tag is not None:
            prompts = [render_prompt(settings.tag.prompt_template, x) for x in settings.tag.labels]
            self.label_vectors = self.model.encode_texts(prompts)

    def __call__(self, table: pa.Table) -> pa.Table:
        errors = table[ERROR].to_pylist()
        images = self._image_vectors(table, errors) if self.settings.needs_image else {}
        texts = self._text_vectors(table, errors) if self.settings.needs_text else {}
        result = self._results(table.num_rows, errors, images, texts)
        table = table.drop_columns([PIXELS, SHAPE, ERROR])
        for name, column in result.items():
            table = table.append_column(name, column)
        return table.append_column("error", pa.array(errors, pa.string()))

    def _image_vectors(self, table: pa.Table, errors: list) -> dict[int, np.ndarray]:
        tensors = {}
        pixels, shapes = table[PIXELS].to_pylist(), table[SHAPE].to_pylist()
        for index, (data, shape) in enumerate(zip(pixels, shapes, strict=True)):
            if errors[index] is None:
                try:
                    array = np.frombuffer(data, dtype=np.uint8).reshape(shape)
                    tensors[index] = self.model.preprocess_image(array)
                except Exception as exc:  # a row the transform rejects is that row's error
                    errors[index] = describe_error(exc)
        if not tensors:
            return {}
        vectors = self.model.encode_images(list(tensors.values()))
        return dict(zip(tensors, vectors, strict=True))

    def _text_vectors(self, table: pa.Table, errors: list) -> dict[int, np.ndarray]:
        column = table[self.text_column].to_pylist()
        wanted = [index for index, error in enumerate(errors) if error is None]
        if not wanted:
            return {}
        vectors = self.model.encode_texts([column[index] for index in wanted])
        return dict(zip(wanted, vectors, strict=True))

    def _results(self, rows: int, errors: list, images: dict, texts: dict) -> dict[str, pa.Array]:
        mode, label = self.settings.mode, self.settings.model_label
        models = pa.array([label if error is None else None for error in errors], pa.string())
        if mode == "embed":
            vectors = images if self.settings.embed_target == "image" else texts
            dim = self.model.info.embed_dim
            spaces = pa.array([self.space if e is None else None for e in errors], pa.string())
            embedding = embedding_array(vectors, rows, dim)
            return {"embedding": embedding, "model": models, "embedding_space": spaces}
        if mode == "score":
            scores: list[float | None] = [None] * rows
            keys = [index for index in images if index in texts]
            if keys:
                found = clip_scores(
                    np.stack([images[i] for i in keys]), np.stack([texts[i] for i in keys])
                )
                for index, score in zip(keys, found, strict=True):
                    scores[index] = score["clip_score"]
            return {"clip_score": pa.array(scores, pa.float64()), "model": models}
        tag = self.settings.tag
        tags: list[list[dict] | None] = [None] * rows
        for index, vector in images.items():
            tags[index] = semantic_tags(
                vector, self.label_vectors, list(tag.labels), self.model.semantics, tag.top_k
            )
        return {"tags": pa.array(tags, TAG_TYPE), "model": models}

"""The `clipfleet` command: `clipfleet score-csv INPUT.csv` (seed 001's evaluation CLI).

Reads rows of (image, text) from a CSV, scores them through a running clipfleet's /v1/score
with bounded concurrency, and writes INPUT_with_scores.csv: the input columns plus
`clip_score` and `error` (empty when the row scored). A failed row is reported and the rest
go on. With --compare it scores everything twice, one pair per request ("single") and
--batch-size pairs per request ("batch"), and prints both throughputs.

Columns (first match, case-insensitive): image = image_input, image_url, url, image,
image_path, path; text = text_prompt, caption, text, prompt. An image starting with http://
or https:// is sent as {"url": ...}; anything else is a local file (relative to the CSV's
folder) sent as base64.

Exit status: 0 when every row scored, 1 when some rows failed, 2 on usage or input errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

IMAGE_COLUMNS = ("image_input", "image_url", "url", "image", "image_path", "path")
TEXT_COLUMNS = ("text_prompt", "caption", "text", "prompt")
MAX_PAIRS_PER_REQUEST = 64  # the service's default limits.max_items


class InputError(Exception):
    """The CSV can't be used (missing, empty, no usable columns)."""


@dataclass
class Run:
    """One pass over the rows: per-row score or error, and the wall time."""

    name: str
    scores: dict[int, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def speed(self, rows: int) -> float:
        return rows / self.seconds if self.seconds else 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipfleet", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score-csv", help="add a clip_score column to a CSV")
    score.add_argument("input", type=Path, help="CSV with an image column and a text column")
    score.add_argument("--url", default="http://127.0.0.1:8000", help="clipfleet base URL")
    score.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    score.add_argument("--profile", default=None, help="profile (fast, accurate); server default")
    score.add_argument("--batch-size", type=int, default=16, help="pairs per batch request")
    score.add_argument("--compare", action="store_true", help="time single vs batch requests")
    score.add_argument("--output", type=Path, default=None, help="default INPUT_with_scores.csv")
    score.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    from clipfleet.batch.command import add_batch_parser

    add_batch_parser(commands)  # `clipfleet batch {embed,score,tag}`: docs/batch.md
    return parser


def pick_column(fieldnames: list[str], candidates: tuple[str, ...], what: str) -> str:
    by_lower = {name.strip().lower(): name for name in fieldnames}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    raise InputError(f"no {what} column: expected one of {', '.join(candidates)}")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def image_ref(value: str, folder: Path) -> dict:
    if value.startswith(("http://", "https://")):
        return {"url": value}
    path = Path(value).expanduser()
    data = (path if path.is_absolute() else folder / path).read_bytes()
    return {"base64": base64.b64encode(data).decode("ascii")}


def build_pairs(
    rows: list[dict[str, str]], image_column: str, text_column: str, folder: Path
) -> tuple[dict[int, dict], dict[int, str]]:
    """Row index -> v1 score pair, or -> the reason the row can't be sent."""
    pairs, errors = {}, {}
    for index, row in enumerate(rows):
        image, text = (row.get(image_column) or "").strip(), (row.get(text_column) or "").strip()
        if not image or not text:
            errors[index] = f"empty {image_column if not image else text_column}"
            continue
        try:
            pairs[index] = {"image": image_ref(image, folder), "text": text}
        except OSError as exc:
            errors[index] = f"cannot read image file: {exc.strerror or exc}"
    return pairs, errors


def error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        where = f" ({error['param']})" if error.get("param") else ""
        return f"HTTP {response.status_code} {error['type']}: {error['message']}{where}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


class Scorer:
    def __init__(self, client: httpx.AsyncClient, profile: str | None, concurrency: int) -> None:
        self.client = client
        self.profile = profile
        self.limit = asyncio.Semaphore(max(1, concurrency))

    async def post(self, pairs: list[dict]) -> tuple[list[float] | None, str | None]:
        body: dict = {"pairs": pairs}
        if self.profile:
            body["profile"] = self.profile
        async with self.limit:
            try:
                response = await self.client.post("/v1/score", json=body)
            except httpx.HTTPError as exc:
                return None, f"request failed: {type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return None, error_text(response)
        return [result["clip_score"] for result in response.json()["results"]], None

    async def chunk(self, run: Run, pairs: dict[int, dict], indices: list[int], bar) -> None:
        scores, error = await self.post([pairs[index] for index in indices])
        if scores is None and len(indices) > 1:
            # One bad row fails the whole request: retry its rows one by one to find it.
            await asyncio.gather(*(self.chunk(run, pairs, [index], bar) for index in indices))
            return
        for position, index in enumerate(indices):
            if scores is None:
                run.errors[index] = error or "unknown error"
            else:
                run.scores[index] = scores[position]
        bar.update(len(indices))


async def score_all(args: argparse.Namespace, pairs: dict[int, dict], name: str, size: int):
    run = Run(name)
    indices = sorted(pairs)
    chunks = [indices[start : start + size] for start in range(0, len(indices), size)]
    limits = httpx.Limits(max_connections=max(1, args.concurrency))
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        scorer = Scorer(client, args.profile, args.concurrency)
        with tqdm(total=len(indices), desc=name, unit="img", disable=None) as bar:
            await asyncio.gather(*(scorer.chunk(run, pairs, chunk, bar) for chunk in chunks))
    run.seconds = time.perf_counter() - started
    return run


def write_output(path: Path, fieldnames: list[str], rows: list[dict], run: Run, skipped: dict):
    columns = [name for name in fieldnames if name not in ("clip_score", "error")]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*columns, "clip_score", "error"])
        writer.writeheader()
        for index, row in enumerate(rows):
            score = run.scores.get(index)
            writer.writerow(
                {
                    **{name: row.get(name, "") for name in columns},
                    "clip_score": "" if score is None else repr(score),
                    "error": skipped.get(index) or run.errors.get(index, ""),
                }
            )


def write_comparison(path: Path, runs: list[Run], rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mode", "rows", "successful", "seconds", "images_per_sec"])
        for run in runs:
            writer.writerow(
                [run.name, rows, len(run.scores), f"{run.seconds:.3f}", f"{run.speed(rows):.2f}"]
            )


def score_csv(args: argparse.Namespace) -> int:
    fieldnames, rows = read_rows(args.input)
    if not rows:
        raise InputError(f"{args.input} has no data rows")
    image_column = pick_column(fieldnames, IMAGE_COLUMNS, "image")
    text_column = pick_column(fieldnames, TEXT_COLUMNS, "text")
    print(f"Processing: {args.input} ({len(rows)} rows; image={image_column}, text={text_column})")
    pairs, skipped = build_pairs(rows, image_column, text_column, args.input.parent)
    batch_size = min(max(1, args.batch_size), MAX_PAIRS_PER_REQUEST)
    modes = [("single", 1), ("batch", batch_size)] if args.compare else [("batch", batch_size)]
    runs = []
    for name, size in modes:
        run = asyncio.run(score_all(args, pairs, name, size))
        print(
            f"{name.capitalize()} evaluation: {len(run.scores)}/{len(pairs)} successful, "
            f"{run.seconds:.2f}s, {run.speed(len(pairs)):.2f} images/sec"
        )
        runs.append(run)
    if args.compare:
        single, batch = runs
        print(f"Single: {single.seconds:.2f}s ({single.speed(len(pairs)):.2f} img/s)")
        print(f"Batch:  {batch.seconds:.2f}s ({batch.speed(len(pairs)):.2f} img/s)")
        if batch.seconds:
            print(f"Speedup: {single.seconds / batch.seconds:.2f}x with batch")
        stats = args.input.with_name(f"{args.input.stem}_comparison_stats.csv")
        write_comparison(stats, runs, len(pairs))
        print(f"Comparison statistics saved to: {stats}")
    final = runs[-1]
    output = args.output or args.input.with_name(f"{args.input.stem}_with_scores.csv")
    write_output(output, fieldnames, rows, final, skipped)
    failures = {**final.errors, **skipped}
    for index in sorted(failures):
        print(f"row {index + 1}: {failures[index]}", file=sys.stderr)
    print(f"Results saved to: {output}")
    print(f"Successfully processed {len(final.scores)}/{len(rows)} rows")
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "batch":
        from clipfleet.batch.command import run_batch

        return run_batch(args)
    try:
        return score_csv(args)
    except InputError as exc:
        print(f"clipfleet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

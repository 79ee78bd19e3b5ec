"""Unique photo-like JPEGs for the peer benchmark: deterministic, ~144 KiB each, cached on disk.

    python -m loadtests.photos build/peers/images --count 2000

Each image is its own seed's picture at a realistic camera/web size (0.8-1 MP, landscape,
portrait and square): three octaves of smooth random colour plus a little luminance grain, so
it compresses like a photo (about 145 KiB on average at quality 85) rather than to nothing (flat
colour) or to megabytes (pure noise). The same index always gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(1024, 768), (1200, 800), (800, 1067), (1280, 720), (960, 960)]
OCTAVES = ((4, 1.0), (24, 0.5), (120, 0.25))  # (cells across, weight)
GRAIN = 3.5  # luminance noise, in 8-bit levels: what sets the file size
QUALITY = 85
VERSION = 1  # bump when the recipe changes: cached folders are rebuilt


def make_photo(index: int, size: tuple[int, int] | None = None) -> bytes:
    width, height = size or SIZES[index % len(SIZES)]
    rng = np.random.default_rng(index)
    picture = np.zeros((height, width, 3), np.float32)
    for cells, weight in OCTAVES:
        grid = rng.uniform(0, 255, (max(2, height * cells // width), cells, 3)).astype(np.uint8)
        smooth = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
        picture += weight * np.asarray(smooth, np.float32)
    picture /= sum(weight for _, weight in OCTAVES)
    picture += rng.normal(0, GRAIN, (height, width, 1)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def _write(args: tuple[Path, int]) -> None:
    folder, index = args
    path = folder / f"{index:05d}.jpg"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(make_photo(index))
    tmp.replace(path)


def ensure_photos(folder: Path, count: int, workers: int = 2) -> list[Path]:
    """The first `count` photos in `folder` (made where missing, or all again when the recipe's
    VERSION changed), in index order."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "VERSION"
    if not stamp.is_file() or stamp.read_text().strip() != str(VERSION):
        for old in folder.glob("*.jpg"):
            old.unlink()
        stamp.write_text(f"{VERSION}\n")
    paths = [folder / f"{index:05d}.jpg" for index in range(count)]
    missing = [(folder, index) for index, path in enumerate(paths) if not path.is_file()]
    if missing:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write, missing, chunksize=16))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    sizes = [path.stat().st_size for path in ensure_photos(args.folder, args.count)]
    print(
        f"{len(sizes)} JPEGs in {args.folder}: mean {np.mean(sizes) / 1024:.0f} KiB "
        f"(min {min(sizes) / 1024:.0f}, max {max(sizes) / 1024:.0f})"
    )


if __name__ == "__main__":
    main()

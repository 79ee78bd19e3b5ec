"""Load time and memory per multiplexed model, measured outside CI (not a test).

    .venv/bin/python -m loadtests.multiplex_memory --arch ViT-B-32 --models 3 --lru 2

Writes `--models` random-init open_clip checkpoints of `--arch` (local-dir folders, different
seeds) to a temporary directory, then requests them through clipfleet.models.catalog.ModelPool in
Ray's LRU order (evict the least recently used, then load) with an LRU of `--lru`, as a
multiplexed replica does: for each request, the wall time and the process RSS before/after.
The first pass loads every model cold from disk (page cache warm after writing them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import open_clip
import psutil
import torch

from clipfleet.config import MultiplexedProfileSpec
from clipfleet.models.catalog import ModelCatalog, ModelPool
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device, set_torch_threads


def write_checkpoints(root: Path, arch: str, count: int) -> list[str]:
    config = open_clip.get_model_config(arch)
    ids = []
    for seed in range(count):
        folder = root / f"{arch.lower()}-{seed}"
        folder.mkdir(parents=True)
        (folder / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": config, "preprocess_cfg": {}})
        )
        torch.manual_seed(seed)
        model = open_clip.create_model(arch)
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
        del model
        ids.append(folder.name)
    gc.collect()
    return ids


async def measure(root: Path, ids: list[str], lru_size: int) -> list[dict]:
    cpu = choose_device("cpu")

    def build(resolved):
        model = load_clip_model(resolved.spec, cpu, resolved.random_weights)
        model.warmup()
        return model

    spec = MultiplexedProfileSpec(checkpoint_dir=str(root), max_models_per_replica=lru_size)
    pool = ModelPool(ModelCatalog("bench", spec), build)
    lru: OrderedDict = OrderedDict()

    async def lru_get(model_id: str):
        if model_id in lru:
            lru.move_to_end(model_id)
            return lru[model_id]
        if len(lru) >= lru_size:
            lru.popitem(last=False)
            gc.collect()
        lru[model_id] = await pool.take(model_id)
        return lru[model_id]

    process = psutil.Process()
    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    rows = []
    for model_id in [*ids, ids[0], ids[-1]]:
        rss_before = process.memory_info().rss
        started = time.perf_counter()
        loaded = await pool.get(model_id, lru_get, lambda: lru)
        request_s = time.perf_counter() - started
        gc.collect()
        embed_started = time.perf_counter()
        loaded.model.embed_images([image])
        rows.append(
            {
                "model": model_id,
                "get_s": round(request_s, 3),
                "embed_one_image_s": round(time.perf_counter() - embed_started, 3),
                "load_s": round(loaded.load_seconds, 3),
                "rss_before_mb": round(rss_before / 2**20),
                "rss_after_mb": round(process.memory_info().rss / 2**20),
                "resident": list(lru),
            }
        )
    rows.append({"pool": pool.describe(lru)["evictions"], "loads": pool.loads})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--lru", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    set_torch_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix="clipfleet-mux-") as folder:
        ids = write_checkpoints(Path(folder), options.arch, options.models)
        for row in asyncio.run(measure(Path(folder), ids, options.lru)):
            print(json.dumps(row))


if __name__ == "__main__":
    main()

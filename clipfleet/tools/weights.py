"""`make weights`: download every model a serve config names into the local caches.

Run on a machine with internet (or bake into an image); afterwards replicas load from
~/.cache (open_clip / Hugging Face) and ~/.cache/torch (torchvision) without the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from clipfleet.config import AppArgs
from clipfleet.models.base import ModelLoadError
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.onnx_runtime import apply_runtime
from clipfleet.models.resnet import ResNetModel


def app_args_in(config_path: Path) -> list[AppArgs]:
    config = yaml.safe_load(config_path.read_text())
    return [AppArgs(**app.get("args", {})) for app in config.get("applications", [])]


def fetch_all(config_path: Path) -> int:
    cpu = choose_device("cpu")
    failures = 0
    for args in app_args_in(config_path):
        specs = {spec.clip for spec in args.profiles.values()}
        specs |= multiplexed_hub_specs(args)
        resnets = {spec.resnet for spec in args.profiles.values()}
        for loader, spec in [(load_clip_model, s) for s in specs] + [
            (ResNetModel, s) for s in resnets
        ]:
            try:
                # runtime onnx: export (and quantise) now, into the cache replicas read
                info = apply_runtime(loader(spec, cpu, False), spec).info
                print(f"ok    {info.model}: {info.weights} ({info.extra.get('runtime')})")
            except ModelLoadError as exc:
                failures += 1
                print(f"FAIL  {exc}", file=sys.stderr)
    return failures


def multiplexed_hub_specs(args: AppArgs) -> set:
    """The hub models multiplexed profiles allow (local checkpoints need no download)."""
    from clipfleet.models.catalog import ModelCatalog

    specs = set()
    for name, spec in args.multiplexed.items():
        catalog = ModelCatalog(name, spec)
        specs |= {catalog.resolve(model_id).spec for model_id in spec.allowed_hub_ids}
    return specs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", type=Path, nargs="?", default=Path("serve_config.yaml"))
    return 1 if fetch_all(parser.parse_args(argv).config) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`clipfleet batch {embed,score,tag}`: argument parsing and the run that prints the summary.

Exit status: 0 when every row has a result, 1 when some rows failed (see their `error`),
2 on usage, config, input or output errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

DEFAULT_SHARD_ROWS = 4096
DEFAULT_TOP_K = 5  # /v1/tag's default (TagRequest.top_k)


def _actors(text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN,MAX (or N), e.g. 1,4") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        required=True,
        help="CSV / JSON Lines / Parquet file or folder,"
        " or a folder of images; local or s3://, gs://, ...",
    )
    parser.add_argument("--output", required=True, help="output folder (Parquet parts)")
    parser.add_argument("--config", type=Path, default=Path("serve_config.yaml"))
    parser.add_argument("--profile", default=None, help="profile, or profile/variant")
    parser.add_argument("--variant", default=None, help="variant of the profile (default stable)")
    parser.add_argument(
        "--format", default="auto", choices=("auto", "csv", "json", "parquet", "images")
    )
    parser.add_argument("--image-column", default=None, help="default: as score-csv")
    parser.add_argument(
        "--image-root",
        default=None,
        help="local image files are read only under it, relative paths from it"
        " (default: the input's folder)",
    )
    parser.add_argument("--text-column", default=None, help="default: as score-csv")
    parser.add_argument("--resume", action="store_true", help="finish a killed job's output")
    parser.add_argument(
        "--address", default=None, help="Ray cluster (default $RAY_ADDRESS, else a local Ray)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per forward (default: the encoder's max_batch_size)",
    )
    parser.add_argument(
        "--actors",
        type=_actors,
        default=None,
        help="MIN,MAX model actors (default: the encoder's autoscaling bounds)",
    )
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs per decode task")
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=DEFAULT_SHARD_ROWS,
        help="rows per output part file (the unit of --resume)",
    )


def add_batch_parser(commands) -> None:
    batch = commands.add_parser("batch", help="embed, score or tag a dataset on Ray Data")
    modes = batch.add_subparsers(dest="batch_mode", required=True)
    embed = modes.add_parser("embed", help="add an `embedding` column")
    _common(embed)
    embed.add_argument(
        "--target",
        choices=("image", "text"),
        default="image",
        help="embed the image column (default) or the text column",
    )
    score = modes.add_parser("score", help="add a `clip_score` column")
    _common(score)
    tag = modes.add_parser("tag", help="add a `tags` column (zero-shot labels)")
    _common(tag)
    tag.add_argument("--labels", default=None, help="comma-separated (default: the config's)")
    tag.add_argument("--labels-file", type=Path, default=None, help="one label per line")
    tag.add_argument("--prompt-template", default=None, help="default: the config's")
    tag.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)


def settings_from(args: argparse.Namespace, gpus: float, cpus: int):
    from clipfleet.batch import settings as s
    from clipfleet.config import AppArgs, clip_deployment_name

    app = s.load_application(args.config)
    try:
        app_args = AppArgs(**(app.get("args") or {}))
    except ValueError as exc:
        raise s.SettingsError(f"{args.config}: invalid args: {exc}") from exc
    profile, variant = s.resolve_model(app_args, args.profile, args.variant)
    entry = s.deployment_entry(app, clip_deployment_name(profile, variant))
    tag = None
    if args.batch_mode == "tag":
        labels = s.read_labels(args.labels, args.labels_file)
        tag = s.tag_settings(app_args, labels, args.prompt_template, args.top_k)
    return s.JobSettings(
        mode=args.batch_mode,
        profile=profile,
        variant=variant,
        spec=app_args.profiles[profile].variants[variant],
        args=app_args,
        batch_size=s.batch_size_for(app, entry, app_args, args.batch_size),
        sizing=s.size_actors(entry, gpus, cpus, args.actors, args.torch_threads),
        tag=tag,
        embed_target=getattr(args, "target", "image"),
    )


def cluster_resources(address: str | None) -> tuple[float, int]:
    """(GPUs in the cluster, CPUs of a node): a local run counts this machine."""
    from clipfleet.batch.job import connect

    if not (address or os.environ.get("RAY_ADDRESS")):
        import torch

        return float(torch.cuda.device_count()), os.cpu_count() or 1
    import ray

    connect(address)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = max((int(node["Resources"].get("CPU", 1)) for node in nodes), default=1)
    return float(ray.cluster_resources().get("GPU", 0)), cpus


def run_batch(args: argparse.Namespace) -> int:
    from clipfleet.batch.inputs import InputError, Location, load_input
    from clipfleet.batch.job import run_job
    from clipfleet.batch.output import OutputError
    from clipfleet.batch.settings import SettingsError

    try:
        output = Location.parse(args.output)
        source = load_input(args.input, args.format, args.image_column, args.text_column, output)
        if args.image_root:
            source = dataclasses.replace(source, base=Location.parse(args.image_root))
        gpus, cpus = cluster_resources(args.address)
        settings = settings_from(args, gpus, cpus)
        check_columns(settings, source)
        summary = run_job(
            settings,
            source,
            args.input,
            output,
            max(1, args.shard_rows),
            args.resume,
            args.address,
            args.decode_cpus,
        )
    except (InputError, OutputError, SettingsError) as exc:
        print(f"clipfleet batch: {exc}", file=sys.stderr)
        return 2
    print(summary.line(settings.mode))
    return 1 if summary.failed else 0


def check_columns(settings, source) -> None:
    from clipfleet.batch.inputs import InputError

    columns = source.table.column_names
    if settings.needs_image and source.image_column is None:
        raise InputError(f"no image column among {columns}; pass --image-column")
    if settings.needs_text and source.text_column is None:
        raise InputError(f"no text column among {columns}; pass --text-column")

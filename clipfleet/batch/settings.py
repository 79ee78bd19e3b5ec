"""What a batch job runs, resolved from the same serve config the service deploys.

The model spec is the profile/variant's `ClipModelSpec`; the forward batch size, the actor's
CPUs / GPU fraction and the actor pool's bounds come from that encoder's `deployments` entry
(user_config.max_batch_size, else EncoderConfig's default; ray_actor_options,
autoscaling_config), so one file sizes both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from clipfleet.api.limits import render_prompts
from clipfleet.config import STABLE_VARIANT, AppArgs, ClipModelSpec, EncoderConfig
from clipfleet.errors import ClipfleetError
from clipfleet.ingress.targets import clip_model_label
from clipfleet.modelref import parse_model_ref

Mode = Literal["embed", "score", "tag"]
APP_IMPORT_PATH = "pipelines.app:build_app"


class SettingsError(ValueError):
    """The config, profile or variant can't be used for a batch job."""


@dataclass(frozen=True)
class ActorSizing:
    """One model actor's resources and the pool's bounds."""

    num_cpus: float
    num_gpus: float
    min_actors: int
    max_actors: int
    torch_threads: int


@dataclass(frozen=True)
class TagSettings:
    labels: tuple[str, ...]
    prompt_template: str
    top_k: int


@dataclass(frozen=True)
class JobSettings:
    mode: Mode
    profile: str
    variant: str
    spec: ClipModelSpec
    args: AppArgs
    batch_size: int
    sizing: ActorSizing
    tag: TagSettings | None = None
    embed_target: Literal["image", "text"] = "image"

    @property
    def model_label(self) -> str:
        return clip_model_label(self.spec, public=False)

    @property
    def needs_image(self) -> bool:
        return self.mode != "embed" or self.embed_target == "image"

    @property
    def needs_text(self) -> bool:
        return self.mode == "score" or (self.mode == "embed" and self.embed_target == "text")


def load_application(config_path: Path) -> dict:
    """The clipfleet application entry of a serve config (the one built by pipelines.app)."""
    try:
        config = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read config {config_path}: {exc}") from exc
    apps = (config or {}).get("applications") or []
    for app in apps:
        if app.get("import_path") == APP_IMPORT_PATH:
            return app
    if len(apps) == 1:
        return apps[0]
    raise SettingsError(f"{config_path}: no application with import_path {APP_IMPORT_PATH}")


def resolve_model(args: AppArgs, profile: str | None, variant: str | None) -> tuple[str, str]:
    """`--profile fast`, `--profile fast/canary` or `--profile fast --variant canary`."""
    try:
        ref = parse_model_ref(profile or args.default_profile)
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    if ref.model_id is not None:
        raise SettingsError("batch jobs take <profile> or <profile>/<variant>, not a model id")
    if ref.variant and variant and ref.variant != variant:
        raise SettingsError(f"--profile names variant {ref.variant!r} but --variant {variant!r}")
    variant = ref.variant or variant or STABLE_VARIANT
    if ref.profile not in args.profiles:
        raise SettingsError(
            f"unknown profile {ref.profile!r}; choose one of {sorted(args.profiles)}"
        )
    if variant not in args.profiles[ref.profile].variants:
        known = sorted(args.profiles[ref.profile].variants)
        raise SettingsError(f"profile {ref.profile!r} has no variant {variant!r}; one of {known}")
    return ref.profile, variant


def deployment_entry(app: dict, name: str) -> dict:
    for entry in app.get("deployments") or []:
        if entry.get("name") == name:
            return entry
    return {}


def size_actors(
    entry: dict,
    gpus_available: float,
    cpus_per_node: int,
    actors: tuple[int, int] | None = None,
    torch_threads: int | None = None,
) -> ActorSizing:
    """GPU nodes: the deployment's CPU / GPU fractions and autoscaling bounds. CPU only: the
    GPU fraction is dropped, and the pool is bounded so the actors' torch threads fit the node."""
    options = entry.get("ray_actor_options") or {}
    autoscaling = entry.get("autoscaling_config") or {}
    num_cpus = float(options.get("num_cpus", 1))
    num_gpus = float(options.get("num_gpus", 0)) if gpus_available > 0 else 0.0
    low = int(autoscaling.get("min_replicas", entry.get("num_replicas", 1)) or 1)
    high = int(autoscaling.get("max_replicas", entry.get("num_replicas", low)) or low)
    if num_gpus > 0:
        high = min(high, max(1, math.floor(gpus_available / num_gpus)))
        threads = torch_threads or max(1, math.ceil(num_cpus))
    else:
        # A CPU forward already uses every thread it gets: more actors than cores only thrash.
        high = min(high, max(1, cpus_per_node // 2))
        threads = torch_threads or max(1, cpus_per_node // high)
    low, high = actors or (max(1, min(low, high)), max(1, high))
    if not 1 <= low <= high:
        raise SettingsError(f"--actors {low},{high}: need 1 <= min <= max")
    return ActorSizing(num_cpus, num_gpus, low, high, threads)


def batch_size_for(app: dict, entry: dict, args: AppArgs, override: int | None) -> int:
    """--batch-size, else the encoder's user_config (EncoderConfig; unset: its default)."""
    if override:
        return override
    try:
        return EncoderConfig(**(entry.get("user_config") or {})).max_batch_size
    except ValueError as exc:
        raise SettingsError(f"deployment {entry.get('name')!r} user_config: {exc}") from exc


def read_labels(labels: str | None, labels_file: Path | None) -> tuple[str, ...] | None:
    found: list[str] = []
    if labels:
        found += [label.strip() for label in labels.split(",") if label.strip()]
    if labels_file:
        try:
            text = Path(labels_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"cannot read --labels-file {labels_file}: {exc}") from exc
        found += [line.strip() for line in text.splitlines() if line.strip()]
    return tuple(found) or None


def tag_settings(
    args: AppArgs, labels: tuple[str, ...] | None, template: str | None, top_k: int
) -> TagSettings:
    """/v1/tag's defaults and bounds: the config's labels and template, top_k capped."""
    labels = labels or args.default_labels
    if len(labels) > args.limits.max_labels:
        raise SettingsError(f"{len(labels)} labels; the limit is {args.limits.max_labels}")
    template = template or args.prompt_template
    try:  # the service's bounds on rendered prompts
        render_prompts(template, labels, args.limits)
    except ClipfleetError as exc:
        raise SettingsError(f"--prompt-template / labels: {exc.message}") from None
    if top_k < 1:
        raise SettingsError("--top-k must be at least 1")
    return TagSettings(tuple(labels), template, min(top_k, args.limits.max_top_k, len(labels)))

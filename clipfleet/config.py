"""Typed application arguments: the `args:` block of serve_config.yaml.

Everything here is validated by pydantic before any deployment starts, and unknown keys are
rejected, so a typo in serve_config.yaml fails `serve run` instead of being silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from clipfleet.api.limits import ApiLimits
from clipfleet.api.settings import AuthConfig, CorsConfig
from clipfleet.config_fleet import AffinityConfig, SharedCacheConfig, StrictModel
from clipfleet.ingress.priority import DEFAULT_BULK_EVERY, DEFAULT_BULK_SLICE_S

RANDOM_WEIGHTS_ENV = "CLIPFLEET_RANDOM_WEIGHTS"
_TRUE_WORDS = {"1", "true", "yes", "on"}
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def random_weights_enabled() -> bool:
    """True when CLIPFLEET_RANDOM_WEIGHTS asks for random initialisation (testing only)."""
    return os.environ.get(RANDOM_WEIGHTS_ENV, "").strip().lower() in _TRUE_WORDS


class RuntimeChoice(StrictModel):
    """How an encoder's image tower runs (docs/performance.md).

    runtime=torch: eager PyTorch (fp16 autocast on CUDA). runtime=onnx: ONNX Runtime, exported
    from the same weights at start-up (or by `make weights`) and cached on disk; the text tower
    stays on torch (its trimmed, variable-length forward is faster there). precision=int8: ORT
    dynamic quantisation, CPU only and opt-in: at start-up its cosine against fp32 on the
    calibration set is measured, and the replica refuses to start below `int8_min_cosine`.
    precision=bf16: the torch image forward under CPU bf16 autocast (AVX512-BF16 / AMX
    matmuls), opt-in, with the same start-up gate against fp32 at `bf16_min_cosine`.
    """

    runtime: Literal["torch", "onnx"] = "torch"
    precision: Literal["fp32", "int8", "bf16"] = "fp32"
    int8_min_cosine: float = Field(0.99, gt=0.0, le=1.0)
    bf16_min_cosine: float = Field(0.999, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _int8_needs_onnx(self):
        if self.precision == "int8" and self.runtime != "onnx":
            raise ValueError("precision int8 needs runtime onnx (torch runs fp32 / fp16 only)")
        if self.precision == "bf16" and self.runtime != "torch":
            raise ValueError("precision bf16 is torch's CPU autocast: it needs runtime torch")
        return self


class ClipModelSpec(RuntimeChoice):
    """Which CLIP to load and from where.

    backend=open_clip: `model` is an open_clip architecture name (ViT-B-32) or `hf-hub:org/repo`;
    `pretrained` is an open_clip tag (laion2b_s34b_b79k, openai) or a local checkpoint file.
    backend=transformers: `model` is a Hugging Face CLIP id or a local directory.
    `architecture` only matters in random-weights mode for hub ids, whose architecture can't be
    read offline: the open_clip name (or transformers id) whose shape to build instead.
    `tokenizer` overrides where the tokenizer comes from: a hub id or a local directory (e.g. a
    SigLIP SentencePiece tokenizer saved with save_pretrained); default: the model's own.
    """

    backend: Literal["open_clip", "transformers"] = "open_clip"
    model: str = Field(min_length=1)
    pretrained: str | None = None
    architecture: str | None = None
    tokenizer: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _pretrained_only_for_open_clip(self) -> ClipModelSpec:
        if self.backend == "transformers" and self.pretrained:
            raise ValueError(
                "`pretrained` is only for backend open_clip; for transformers put the hub id or "
                "local directory in `model`"
            )
        return self


class ResNetSpec(RuntimeChoice):
    """A torchvision classification model used as a feature extractor.

    `weights` is a torchvision weights enum name (IMAGENET1K_V2, DEFAULT) or a local state-dict
    file; `transforms_from` names the weights enum whose transforms to use with a local file.
    """

    model: str = "resnet50"
    weights: str = "IMAGENET1K_V2"
    transforms_from: str = "DEFAULT"


STABLE_VARIANT = "stable"


class ProfileSpec(StrictModel):
    """A profile's models. `clip:` is shorthand for `variants: {stable: ...}`; more variants
    (canaries) each get their own encoder deployment, and the Ingress's `user_config` weights
    split traffic between them."""

    variants: dict[str, ClipModelSpec]
    resnet: ResNetSpec = ResNetSpec()

    @model_validator(mode="before")
    @classmethod
    def _clip_shorthand(cls, data):
        if isinstance(data, dict) and "clip" in data:
            if "variants" in data:
                raise ValueError("give either `clip` or `variants`, not both")
            data = {**data, "variants": {STABLE_VARIANT: data["clip"]}}
            del data["clip"]
        return data

    @field_validator("variants")
    @classmethod
    def _has_stable(cls, variants: dict[str, ClipModelSpec]) -> dict[str, ClipModelSpec]:
        if STABLE_VARIANT not in variants:
            raise ValueError(f"variants must include {STABLE_VARIANT!r}")
        for name in variants:
            if not _NAME_PATTERN.match(name):
                raise ValueError(f"variant name {name!r} must be lowercase letters, digits, _ or -")
        return variants

    @property
    def clip(self) -> ClipModelSpec:
        """The stable variant's CLIP."""
        return self.variants[STABLE_VARIANT]


class BatchingConfig(StrictModel):
    """Dynamic batching knobs, set per encoder deployment in its `user_config`."""

    max_batch_size: int = Field(16, ge=1, le=512)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=5.0)


class CacheConfig(StrictModel):
    """The encoders' embedding LRU, keyed by content hash (decoded pixels, or the text), and
    optionally a `shared` second level in Valkey / Redis."""

    enabled: bool = True
    max_entries: int = Field(20_000, ge=0)
    max_bytes: int = Field(128 * 1024 * 1024, ge=0)
    shared: SharedCacheConfig | None = None


class EncoderConfig(BatchingConfig):
    """An encoder's `user_config`, applied live by `reconfigure()` (no replica restart); an
    encoder without one runs on these defaults. The one home of its batching settings.

    A forward running past `stall_limit_s` fails the replica's health check and Serve replaces
    it (clipfleet/replicas/serving.py): set it well above the slowest forward.
    The fault_* knobs are for rollout drills (a failing, slow or hung replica); 0 in
    production. `fault_stall_s` hangs the next forward of `fault_stall_replicas` replicas.
    """

    cache: CacheConfig = CacheConfig()
    # Priority classes (clipfleet/ingress/priority.py): while bulk work waits, at least one forward
    # in this many serves it; the others serve interactive work first.
    bulk_every: int = Field(DEFAULT_BULK_EVERY, ge=2, le=1000)
    # Items in one bulk forward (null: max_batch_size): what an interactive request waits for
    # where a bulk forward cannot be parked (bulk_preempt off, a model without torch modules).
    bulk_max_batch_size: int | None = Field(None, ge=1, le=512)
    # Interactive work parks a running bulk forward at its next torch module call and runs
    # first (clipfleet/replicas/preempt.py); false: it waits for the bulk forward's end.
    bulk_preempt: bool = True
    # A parked bulk forward whose turn is due (bulk_every) goes on for this long before
    # interactive work may park it again (null: to its end): the most an interactive request
    # waits for one bulk turn. Bulk keeps one slice in every bulk_every turns.
    bulk_slice_s: float | None = Field(DEFAULT_BULK_SLICE_S, ge=0.0, le=60.0)
    stall_limit_s: float = Field(15.0, gt=0.0, le=3600.0)
    fault_error_ratio: float = Field(0.0, ge=0.0, le=1.0)
    fault_latency_s: float = Field(0.0, ge=0.0, le=30.0)
    fault_stall_s: float = Field(0.0, ge=0.0, le=3600.0)
    fault_stall_replicas: int = Field(1, ge=1, le=1024)


class FetchLimits(StrictModel):
    timeout_s: float = Field(10.0, gt=0, le=120)
    max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(50_000_000, ge=64)
    min_side: int = Field(8, ge=1)
    max_redirects: int = Field(5, ge=0, le=20)
    # Images are downscaled (JPEG draft mode + resize) so that their shorter side is at most this
    # before they are shipped to encoders: big enough for every model's own preprocessing.
    ship_shortest_side: int = Field(448, ge=64, le=4096)
    connection_limit: int = Field(64, ge=1)
    allowed_content_types: tuple[str, ...] = (
        *("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"),
        "application/octet-stream",
    )
    # SSRF allow-list (see clipfleet.images.netguard): internal networks (CIDRs) and host names
    # (exact, or `*.example.com`) that image URLs may reach. Empty: public addresses only.
    allow_private_networks: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Ports image URLs may name (every redirect hop too). Add a port only for a source you run.
    allowed_ports: tuple[int, ...] = Field((80, 443), min_length=1)

    # Decode memory budget (clipfleet.images.decode, clipfleet.images.fetch): concurrent decodes per
    # replica are bounded by their estimated bytes (raster = width x height x bytes per pixel, +
    # bands), on `decode_threads` threads. One image over the budget still decodes, alone.
    decode_budget_bytes: int = Field(512 * 1024 * 1024, ge=16 * 1024 * 1024)
    decode_threads: int = Field(2, ge=1, le=64)
    # The shipped array's longer side: `crop` keeps its centre (the encoders resize the shorter
    # side and centre-crop a square inside it); `squash` scales the long axis alone, for models
    # that resize both axes to a square without cropping.
    ship_longest_side: int = Field(896, ge=64, le=65535)
    ship_long_side_fit: Literal["crop", "squash"] = "crop"

    @model_validator(mode="after")
    def _long_side_not_shorter(self) -> FetchLimits:
        if self.ship_longest_side < self.ship_shortest_side:
            raise ValueError("ship_longest_side must be at least ship_shortest_side")
        return self

    @field_validator("allowed_ports")
    @classmethod
    def _valid_ports(cls, ports: tuple[int, ...]) -> tuple[int, ...]:
        bad = [port for port in ports if not 1 <= port <= 65535]
        if bad:
            raise ValueError(f"ports must be 1-65535, got {bad}")
        return ports

    # JPEGs go to the encoders undecoded; one on a GPU decodes them there
    # (clipfleet.images.gpu_decode), one without decodes them on its CPU. Off: the fetcher decodes
    # every image.
    gpu_decode: bool = False

    @field_validator("allow_private_networks")
    @classmethod
    def _valid_networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad entry
        return networks


DEFAULT_LABELS: tuple[str, ...] = (
    # seed 002's label sets: pet types and fur lengths
    *("cat", "dog", "hamster", "rabbit", "bird", "fish", "turtle", "snake", "lizard"),
    *("long-hair", "short-hair", "medium-hair"),
)


class MultiplexedProfileSpec(StrictModel):
    """A profile kind whose one encoder deployment serves many models of one backend, loaded on
    demand by id (`<profile>:<model-id>`) and kept in a per-replica LRU (Serve multiplexing).

    A model id is either a path relative to `checkpoint_dir` (resolved with realpath; escapes
    through `..` or symlinks are refused) or a hub id listed in `allowed_hub_ids`. Local
    checkpoints: for open_clip a `local-dir` folder (open_clip_config.json + weights) or a
    weights file for `architecture`; for transformers a save_pretrained folder.
    `architecture` is also what random-weights mode builds for hub ids.
    """

    backend: Literal["open_clip", "transformers"] = "open_clip"
    checkpoint_dir: str | None = None
    allowed_hub_ids: tuple[str, ...] = ()
    architecture: str | None = None
    tokenizer: str | None = Field(None, min_length=1)
    max_models_per_replica: int = Field(2, ge=1, le=64)
    # A model no request used for this long is unloaded (memory back); null: kept until evicted.
    idle_ttl_s: float | None = Field(600.0, ge=1, le=7 * 86400)

    @model_validator(mode="after")
    def _has_a_source(self) -> MultiplexedProfileSpec:
        if not self.checkpoint_dir and not self.allowed_hub_ids:
            raise ValueError("set `checkpoint_dir` and/or `allowed_hub_ids`: no model is allowed")
        return self


class AppArgs(StrictModel):
    profiles: dict[str, ProfileSpec]
    default_profile: str = "fast"
    fetch: FetchLimits = FetchLimits()
    limits: ApiLimits = ApiLimits()
    auth: AuthConfig = AuthConfig()
    cors: CorsConfig = CorsConfig()
    default_labels: tuple[str, ...] = DEFAULT_LABELS
    prompt_template: str = "a photo of a {label}."
    # Scale to zero: a never-measured profile's cold start (clipfleet/ingress/coldstart.py).
    cold_start_estimate_s: float = Field(60.0, gt=0, le=3600)
    # Multiplexed profiles (requests name `<profile>:<model-id>`); see docs/models.md.
    multiplexed: dict[str, MultiplexedProfileSpec] = {}
    affinity: AffinityConfig = AffinityConfig()

    @model_validator(mode="before")
    @classmethod
    def _batching_moved(cls, data):
        if isinstance(data, dict) and "batching" in data:
            raise ValueError(
                "args.batching is gone: set max_batch_size / batch_wait_timeout_s in each "
                "encoder deployment's user_config (EncoderConfig; unset: its defaults), "
                "see docs/configuration.md"
            )
        return data

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, profiles: dict[str, ProfileSpec]) -> dict[str, ProfileSpec]:
        if not profiles:
            raise ValueError("at least one profile is required")
        for name in profiles:
            if not _NAME_PATTERN.match(name):
                raise ValueError(
                    f"profile name {name!r} must be lowercase letters, digits, '_' or '-'"
                )
        return profiles

    @field_validator("prompt_template")
    @classmethod
    def _template_has_label(cls, template: str) -> str:
        if "{label}" not in template:
            raise ValueError("prompt_template must contain '{label}'")
        return template

    @model_validator(mode="after")
    def _default_profile_exists(self) -> AppArgs:
        if self.default_profile not in self.profiles:
            raise ValueError(
                f"default_profile {self.default_profile!r} is not one of {sorted(self.profiles)}"
            )
        resnet_names: dict[str, ResNetSpec] = {}
        for spec in self.profiles.values():
            name = resnet_deployment_name(spec.resnet)
            if resnet_names.setdefault(name, spec.resnet) != spec.resnet:
                raise ValueError(
                    f"two profiles use ResNet model {spec.resnet.model!r} with different weights;"
                    " use one weights setting per torchvision model"
                )
        return self

    @model_validator(mode="after")
    def _multiplexed_names(self) -> AppArgs:
        for name in self.multiplexed:
            if not _NAME_PATTERN.match(name):
                raise ValueError(
                    f"multiplexed profile name {name!r} must be lowercase letters, "
                    "digits, '_' or '-'"
                )
            if name in self.profiles:
                raise ValueError(f"{name!r} is both a profile and a multiplexed profile")
        return self

    @model_validator(mode="after")
    def _affinity_names(self) -> AppArgs:
        encoders = deployment_names(self) - set(FIXED_DEPLOYMENTS)
        encoders -= {multiplexed_deployment_name(profile) for profile in self.multiplexed}
        unknown = sorted(set(self.affinity.deployments) - encoders)
        if unknown:
            raise ValueError(
                f"affinity.deployments {unknown} are not CLIP / ResNet encoder deployments of "
                f"this config; choose from {sorted(encoders)}"
            )
        return self


INGRESS_DEPLOYMENT = "Ingress"
FETCHER_DEPLOYMENT = "ImageFetcher"
SCORER_DEPLOYMENT = "Scorer"
FIXED_DEPLOYMENTS = (INGRESS_DEPLOYMENT, FETCHER_DEPLOYMENT, SCORER_DEPLOYMENT)


def multiplexed_deployment_name(profile: str) -> str:
    return f"clip_{profile}_multiplexed"


def clip_deployment_name(profile: str, variant: str = STABLE_VARIANT) -> str:
    return f"clip_{profile}" if variant == STABLE_VARIANT else f"clip_{profile}_{variant}"


def resnet_deployment_name(spec: ResNetSpec) -> str:
    """Profiles that name the same ResNet share one deployment (one copy of the weights)."""
    return f"resnet_{spec.model}"


def deployment_names(args: AppArgs) -> set[str]:
    """Every deployment build_app binds for these args: the names a Serve config may configure."""
    names = set(FIXED_DEPLOYMENTS)
    for profile, spec in args.profiles.items():
        names |= {clip_deployment_name(profile, variant) for variant in spec.variants}
        names.add(resnet_deployment_name(spec.resnet))
    return names | {multiplexed_deployment_name(profile) for profile in args.multiplexed}

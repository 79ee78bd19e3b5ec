"""Multiplexed profiles: which model ids may be loaded, and the per-replica loading around Ray.

Ray Serve's `@serve.multiplexed` keeps the per-replica LRU and tells the routers which replica
holds which id. Its loader evicts the least-recently-used model *before* it loads the new one,
so nothing that can fail may run inside it:

- `ModelCatalog.resolve` checks an id (allow-list, or a checkpoint under the allowed directory,
  realpath-resolved) before anything else: an unknown or disallowed id is a 404/403 and never
  reaches the loader, so it evicts nothing.
- `ModelPool` loads a new model *outside* Ray's loader (staging), and Ray's loader only takes
  the staged model: a checkpoint that fails to load is an error for that id alone and evicts
  nothing. The price is one extra model in memory while a new one loads.

Plain asyncio, no Ray: the encoder deployment passes Ray's loader in; unit tests pass a fake.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil

from clipfleet.config import ClipModelSpec, MultiplexedProfileSpec, random_weights_enabled
from clipfleet.errors import (
    ForbiddenError,
    InvalidRequestError,
    ModelLoadFailedError,
    ModelNotFoundError,
)
from clipfleet.modelref import MODEL_ID_PATTERN
from clipfleet.observability import metrics

logger = logging.getLogger("ray.serve")

PARAM = "model"


@dataclass(frozen=True)
class ResolvedModel:
    model_id: str
    source: Literal["local", "hub"]
    spec: ClipModelSpec
    random_weights: bool = False


class ModelCatalog:
    """The model ids one multiplexed profile may serve."""

    def __init__(self, profile: str, spec: MultiplexedProfileSpec) -> None:
        self.profile = profile
        self.spec = spec
        self._root = os.path.realpath(spec.checkpoint_dir) if spec.checkpoint_dir else None

    def resolve(self, model_id: str) -> ResolvedModel:
        """What to load for `model_id`; ForbiddenError (403) or ModelNotFoundError (404)."""
        if not MODEL_ID_PATTERN.match(model_id) or ".." in model_id.split("/"):
            raise ForbiddenError(
                f"model id {model_id!r} is not allowed: use a path relative to the checkpoint "
                "directory (no '..', not absolute) or an allowed hub id",
                PARAM,
            )
        if model_id in self.spec.allowed_hub_ids:
            return ResolvedModel(
                model_id, "hub", self._hub_spec(model_id), random_weights_enabled()
            )
        if self._root is None:
            raise ForbiddenError(
                f"model id {model_id!r} is not in profile {self.profile!r}'s allowed_hub_ids",
                PARAM,
            )
        path = os.path.realpath(os.path.join(self._root, model_id))
        if path == self._root or os.path.commonpath([self._root, path]) != self._root:
            raise ForbiddenError(
                f"model id {model_id!r} resolves outside profile {self.profile!r}'s checkpoint "
                "directory",
                PARAM,
            )
        spec = self._local_spec(path) if os.path.exists(path) else None
        if spec is None:
            raise ModelNotFoundError(
                f"profile {self.profile!r} has no model {model_id!r}: no {self.spec.backend} "
                "checkpoint by that path under its checkpoint directory, and not an allowed hub id",
                PARAM,
            )
        return ResolvedModel(model_id, "local", spec)

    def check(self, model_id: str) -> None:
        """The ingress's check: all of `resolve` where this process sees the checkpoint
        directory; where it doesn't (an ingress on a node without the model volume), only what
        needs no files (grammar, allow-list), and the encoder's `resolve` decides the rest,
        still before Ray's loader runs."""
        if self._root is not None and not os.path.isdir(self._root):
            if not MODEL_ID_PATTERN.match(model_id) or ".." in model_id.split("/"):
                self.resolve(model_id)  # raises the same ForbiddenError
            return
        self.resolve(model_id)

    def _local_spec(self, path: str) -> ClipModelSpec | None:
        tokenizer = self.spec.tokenizer
        if self.spec.backend == "transformers":
            if os.path.isfile(os.path.join(path, "config.json")):
                return ClipModelSpec(backend="transformers", model=path, tokenizer=tokenizer)
            return None
        if os.path.isfile(os.path.join(path, "open_clip_config.json")):
            return ClipModelSpec(model=f"local-dir:{path}", tokenizer=tokenizer)
        if os.path.isfile(path) and self.spec.architecture:
            return ClipModelSpec(model=self.spec.architecture, pretrained=path, tokenizer=tokenizer)
        return None

    def _hub_spec(self, model_id: str) -> ClipModelSpec:
        if self.spec.backend == "transformers":
            return ClipModelSpec(
                backend="transformers",
                model=model_id,
                architecture=self.spec.architecture,
                tokenizer=self.spec.tokenizer,
            )
        return ClipModelSpec(
            model=f"hf-hub:{model_id}",
            architecture=self.spec.architecture,
            tokenizer=self.spec.tokenizer,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.spec.backend,
            "checkpoint_dir": self.spec.checkpoint_dir,
            "allowed_hub_ids": list(self.spec.allowed_hub_ids),
            "max_models_per_replica": self.spec.max_models_per_replica,
        }


@dataclass
class LoadedModel:
    """One model in a replica's LRU (what Ray's loader returns)."""

    model_id: str
    source: str
    model: Any  # a clipfleet.models.base.ClipModel
    load_seconds: float
    rss_delta_bytes: int
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "source": self.source,
            "load_seconds": round(self.load_seconds, 3),
            "rss_delta_mb": round(self.rss_delta_bytes / 2**20, 1),
            **{k: v for k, v in self.model.info.as_dict().items() if k != "load_seconds"},
        }


LruGet = Callable[[str], Awaitable[LoadedModel]]


class ModelPool:
    """Validation, staged loading and bookkeeping around a replica's LRU (Ray's)."""

    def __init__(
        self,
        catalog: ModelCatalog,
        load_model: Callable[[ResolvedModel], Any],
    ) -> None:
        """load_model: blocking; builds a ClipModel from a resolved spec (run in a thread)."""
        self.catalog = catalog
        self._load_model = load_model
        self._staging: dict[str, asyncio.Task] = {}
        self._resident: dict[str, LoadedModel] = {}
        self.loads = 0
        self.load_failures = 0
        self.hits = 0
        self.evictions = 0
        self.idle_unloads = 0
        self.load_seconds_total = 0.0
        self.last_failures: dict[str, str] = {}

    @property
    def profile(self) -> str:
        return self.catalog.profile

    async def get(
        self,
        model_id: str,
        lru_get: LruGet,
        lru_models: Callable[[], Mapping[str, LoadedModel]],
        count: bool = True,
    ) -> LoadedModel:
        """The loaded model for `model_id`, through Ray's LRU; errors never reach Ray's loader."""
        resolved = self.catalog.resolve(model_id)
        if model_id in lru_models():
            if count:
                self.hits += 1
                metrics.record_multiplexed("hit", self.profile)
        else:
            await self._stage(resolved)
        loaded = await lru_get(model_id)
        leftover = self._staging.get(model_id)
        if leftover is not None and leftover.done():
            # a request that raced another's load staged a second copy Ray never took: drop it
            del self._staging[model_id]
        self._note_evictions(lru_models())
        return loaded

    async def take(self, model_id: str) -> LoadedModel:
        """The body of Ray's loader: the staged model (a load that can no longer fail), or, if
        another request's load already consumed it, a load now."""
        task = self._staging.pop(model_id, None)
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            return task.result()
        return await self._load(self.catalog.resolve(model_id))

    async def _stage(self, resolved: ResolvedModel) -> None:
        task = self._staging.get(resolved.model_id)
        if task is None:
            task = asyncio.ensure_future(self._load(resolved))
            self._staging[resolved.model_id] = task
        try:
            await asyncio.shield(task)
        except BaseException:
            if self._staging.get(resolved.model_id) is task and task.done():
                del self._staging[resolved.model_id]  # a later request tries again
            raise

    async def _load(self, resolved: ResolvedModel) -> LoadedModel:
        process = psutil.Process()
        rss_before = process.memory_info().rss
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(self._load_model, resolved)
        except Exception as exc:
            self.load_failures += 1
            # The library's text (paths, internals) stays in the operator's logs.
            self.last_failures[resolved.model_id] = f"{type(exc).__name__}; see the replica's log"
            metrics.record_multiplexed("load_failure", self.profile)
            logger.exception("multiplexed model %s:%s failed to load", self.profile, resolved)
            raise ModelLoadFailedError(
                f"model {resolved.model_id!r} of profile {self.profile!r} could not be loaded "
                f"({type(exc).__name__}); the operator's logs have the details. Other models "
                "of this profile are unaffected.",
                PARAM,
            ) from exc
        seconds = time.perf_counter() - started
        self.loads += 1
        self.load_seconds_total += seconds
        self.last_failures.pop(resolved.model_id, None)
        metrics.record_multiplexed("load", self.profile, seconds)
        rss_delta = process.memory_info().rss - rss_before
        logger.info(
            "loaded multiplexed model %s:%s in %.2f s (RSS %+.0f MB)",
            self.profile,
            resolved.model_id,
            seconds,
            rss_delta / 2**20,
        )
        return LoadedModel(resolved.model_id, resolved.source, model, seconds, rss_delta)

    def note_idle_unload(self, model_id: str) -> None:
        """`model_id` left the LRU because no request used it for idle_ttl_s (not an eviction)."""
        self._resident.pop(model_id, None)
        self.idle_unloads += 1
        metrics.record_multiplexed("idle_unload", self.profile)
        logger.info("unloaded idle multiplexed model %s:%s", self.profile, model_id)

    def _note_evictions(self, models: Mapping[str, LoadedModel]) -> None:
        evicted = [model_id for model_id in self._resident if model_id not in models]
        for model_id in evicted:
            self.evictions += 1
            metrics.record_multiplexed("eviction", self.profile)
            logger.info("evicted multiplexed model %s:%s", self.profile, model_id)
        self._resident = dict(models)

    def describe(self, models: Mapping[str, LoadedModel]) -> dict[str, Any]:
        self._note_evictions(models)
        return {
            **self.catalog.describe(),
            "resident": [loaded.describe() for loaded in models.values()],  # LRU first
            "loading": sorted(self._staging),
            "loads": self.loads,
            "load_failures": self.load_failures,
            "hits": self.hits,
            "evictions": self.evictions,
            "idle_unloads": self.idle_unloads,
            "load_seconds_total": round(self.load_seconds_total, 3),
            "last_failures": dict(self.last_failures),
        }


class MultiplexedProfiles:
    """The ingress's side: each multiplexed profile's deployment handle and catalog."""

    def __init__(
        self, specs: Mapping[str, MultiplexedProfileSpec], handles: Mapping[str, Any]
    ) -> None:
        self.handles = dict(handles)
        self.catalogs = {name: ModelCatalog(name, spec) for name, spec in specs.items()}

    def __contains__(self, name: object) -> bool:
        return name in self.handles

    def __getitem__(self, name: str) -> Any:
        return self.handles[name]

    def items(self):
        return self.handles.items()

    def handle_for(self, name: str, model_id: str | None, plain_profiles: Collection[str]) -> Any:
        """The handle that routes to replicas holding `model_id`, once the id is checked
        (404/403/422 before any encoder sees it)."""
        if name not in self.handles:
            if name in plain_profiles:
                raise InvalidRequestError(
                    f"profile {name!r} is not multiplexed; name it without ':<model-id>'",
                    PARAM,
                    status=422,
                )
            raise ModelNotFoundError(
                f"unknown multiplexed profile {name!r}; choose one of {sorted(self.handles)}",
                PARAM,
            )
        if model_id is None:
            raise InvalidRequestError(
                f"profile {name!r} serves many models: name one as {name}:<model-id>",
                PARAM,
                status=422,
            )
        self.catalogs[name].check(model_id)
        return self.handles[name].options(multiplexed_model_id=model_id)

    async def details(self) -> dict[str, Any]:
        """Per profile: what may be loaded, and one replica's pool (resident models, loads,
        hits, evictions, load time)."""
        names = list(self.handles)
        pools = await asyncio.gather(
            *(self.handles[name].describe.remote() for name in names), return_exceptions=True
        )
        details = {}
        for name, pool in zip(names, pools, strict=True):
            if isinstance(pool, BaseException):
                pool = {"ready": False, "reason": type(pool).__name__}
            details[name] = {**self.catalogs[name].describe(), "replica": pool}
        return details

"""A multiplexed CLIP encoder replica without Ray: the encoder core over a pool of models of one
backend, loaded by id.

Serve routes a request by its `multiplexed_model_id`, which the replica reads per request; here
that is `REQUESTED_MODEL` (a context variable; the shell passes Serve's reader). The LRU is
`ModelLru`, Ray's order of work reduced to its essentials; the shell passes its
`@serve.multiplexed` one instead. Validation and loading live in clipfleet.models.catalog (no bad
id or failing checkpoint ever evicts a loaded model).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from clipfleet.config import FetchLimits, MultiplexedProfileSpec
from clipfleet.errors import InvalidRequestError
from clipfleet.models.catalog import LoadedModel, ModelCatalog, ModelPool, ResolvedModel
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import DevicePlan
from clipfleet.models.embedding_space import stamp
from clipfleet.replicas import LOCAL_REPLICA
from clipfleet.replicas.core import DirectQueue, EncoderCore, QueueFactory

# The model id of the request being served, where no Serve replica context provides one.
REQUESTED_MODEL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "clipfleet_multiplexed_model_id", default=""
)


class Lru(Protocol):
    """The replica's LRU of loaded models: Ray's `@serve.multiplexed` one under Serve."""

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """The resident models, least recently used first."""

    async def get(self, model_id: str) -> LoadedModel: ...

    def unload(self, model_id: str) -> None:
        """Take `model_id` out (and out of Serve's routing)."""


class ModelLru:
    """serve.multiplexed's _ModelMultiplexWrapper.load_model, reduced to its order of work: on a
    miss with a full cache it evicts the least-recently-used model *before* calling the loader."""

    def __init__(self, loader: Callable, capacity: int) -> None:
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.loader_calls: list[str] = []
        self._loader = loader
        self._capacity = capacity

    async def get(self, model_id: str) -> Any:
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        if len(self.models) >= self._capacity:
            self.models.popitem(last=False)
        self.loader_calls.append(model_id)
        self.models[model_id] = await self._loader(model_id)
        return self.models[model_id]

    def unload(self, model_id: str) -> None:
        self.models.pop(model_id, None)


class MultiplexedModels:
    """The core's models for a multiplexed profile: the requested id's model, through the
    catalog's pool (validation, staged loads, bookkeeping) and the LRU; models no request used
    for `idle_ttl_s` are unloaded."""

    kinds = ("image", "text")
    fixed = None
    cache_space = None  # no one space: the shared cache level is not used (logged)

    def __init__(
        self,
        pool: ModelPool,
        lru: Lru,
        spec: MultiplexedProfileSpec,
        device: str,
        random_weights: bool,
        requested_model_id: Callable[[], str],
        clock: Callable[[], float],
    ) -> None:
        self.pool = pool
        self.lru = lru
        self.device = device
        # local checkpoints always load their weights; hub ids get random ones in that mode
        self.random_weights = random_weights and bool(spec.allowed_hub_ids)
        self.idle_ttl_s = spec.idle_ttl_s
        self.last_used: dict[str, float] = {}
        self._requested_model_id = requested_model_id
        self._clock = clock
        self._sweeper: asyncio.Task | None = None

    async def model(self, model_id: str, count: bool = True) -> LoadedModel:
        """The loaded model for `model_id`, through the LRU (hits counted unless `count` is
        false: a batch or a side lookup of a request already counted)."""
        loaded = await self.pool.get(model_id, self.lru.get, lambda: self.lru.models, count)
        self._note_use(model_id)
        return loaded

    async def for_request(self, count: bool = True) -> LoadedModel:
        model_id = self._requested_model_id()
        if not model_id:
            raise InvalidRequestError("name a model as <profile>:<model-id>", "model", status=422)
        return await self.model(model_id, count)

    def unload_idle(self) -> list[str]:
        """Unload the resident models no request used for idle_ttl_s; their ids."""
        if self.idle_ttl_s is None:
            return []
        now = self._clock()
        idle = [
            model_id
            for model_id in dict(self.lru.models)
            if now - self.last_used.get(model_id, now) >= self.idle_ttl_s
        ]
        for model_id in idle:
            self.lru.unload(model_id)
            self.last_used.pop(model_id, None)
            self.pool.note_idle_unload(model_id)
        if idle:
            gc.collect()  # the weights' memory back now, not at some later collection
        return idle

    async def _sweep_idle(self) -> None:
        interval = min(max(self.idle_ttl_s / 4, 0.5), 30.0)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                self.unload_idle()

    def _note_use(self, model_id: str) -> None:
        self.last_used[model_id] = self._clock()
        if self.idle_ttl_s is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    def describe(self) -> dict[str, Any]:
        """The pool: resident models (LRU first), loads, hits, evictions, failures."""
        return {
            **self.pool.describe(dict(self.lru.models)),
            "family": "clip",
            "multiplexed": True,
            "profile": self.pool.profile,
            "random_weights": self.random_weights,
            "device": self.device,
            "idle_ttl_s": self.idle_ttl_s,
        }


class MultiplexedClipEncoder(EncoderCore):
    """The encoder core over `MultiplexedModels`: a batch never mixes models."""

    def __init__(
        self,
        profile: str,
        spec: MultiplexedProfileSpec,
        plan: DevicePlan,
        random_weights: bool = False,
        replica_id: str = LOCAL_REPLICA,
        load: Callable[[ResolvedModel], Any] | None = None,
        limits: FetchLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        queue: QueueFactory = DirectQueue,
        lru: Lru | None = None,
        requested_model_id: Callable[[], str] = REQUESTED_MODEL.get,
    ) -> None:
        """load: blocking, resolved spec -> ClipModel (default: load and warm up on `plan`);
        limits: the application's fetch limits, which inline images are decoded within;
        clock: when models were last used (idle_ttl_s); queue: how items reach a forward (a
        Serve shell's @serve.batch); lru: the pool's LRU (default `ModelLru`, sized by the
        spec); requested_model_id: the current request's model id."""
        self.plan = plan
        self.pool = ModelPool(ModelCatalog(profile, spec), load or self._build)
        self.lru = lru or ModelLru(self.pool.take, spec.max_models_per_replica)
        models = MultiplexedModels(
            self.pool, self.lru, spec, plan.name, random_weights, requested_model_id, clock
        )
        super().__init__(models, replica_id, None, limits, queue)

    def _build(self, resolved: ResolvedModel) -> Any:
        model = load_clip_model(resolved.spec, self.plan, resolved.random_weights)
        model.warmup()
        stamp(model)
        return model

    async def model(self, model_id: str, count: bool = True) -> LoadedModel:
        """The loaded model for `model_id` (see MultiplexedModels.model)."""
        return await self.models.model(model_id, count)

    def unload_idle(self) -> list[str]:
        return self.models.unload_idle()

    async def scoring(self) -> dict:
        """The requested model's score semantics (activation, logit_scale, logit_bias)."""
        return (await self.models.for_request(count=False)).model.semantics.as_dict()

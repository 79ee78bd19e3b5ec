"""Ray-free stand-ins for a multiplexed encoder: Ray's LRU order (evict, then load) and a
handle whose `.options(multiplexed_model_id=...)` picks the model, like a DeploymentHandle."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np

from clipfleet.config import MultiplexedProfileSpec
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.multiplex import LoadedModel, ModelCatalog, ModelPool, ResolvedModel
from tests.support.local_dag import LocalMethod


class FakeRayLru:
    """serve.multiplexed's _ModelMultiplexWrapper.load_model, reduced to its order of work: on a
    miss with a full cache it evicts the least-recently-used model *before* calling the loader."""

    def __init__(self, loader, capacity: int) -> None:
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


def load_for_tests(resolved: ResolvedModel):
    return load_clip_model(resolved.spec, choose_device("cpu"), resolved.random_weights)


class LocalMultiplexedEncoder:
    def __init__(self, profile: str, spec: MultiplexedProfileSpec, load=load_for_tests) -> None:
        self.pool = ModelPool(ModelCatalog(profile, spec), load)
        self.lru = FakeRayLru(self.pool.take, spec.max_models_per_replica)

    async def model(self, model_id: str) -> LoadedModel:
        return await self.pool.get(model_id, self.lru.get, lambda: self.lru.models)

    async def embed_image(self, model_id: str, image: np.ndarray, timed: bool = False):
        started = time.perf_counter()
        vector = (await self.model(model_id)).model.embed_images([image])[0]
        return (vector, time.perf_counter() - started) if timed else vector

    async def count_tokens(self, model_id: str, texts: list[str]) -> list[int]:
        return (await self.model(model_id)).model.count_tokens(texts)

    async def embed_text(self, model_id: str, text: str) -> np.ndarray:
        return (await self.model(model_id)).model.encode_texts([text])[0]

    async def embed_texts(self, model_id: str, texts: list[str]) -> np.ndarray:
        return (await self.model(model_id)).model.encode_texts(texts)

    async def scoring(self, model_id: str) -> dict:
        return (await self.model(model_id)).model.semantics.as_dict()

    def describe(self, model_id: str | None = None) -> dict:
        return {**self.pool.describe(self.lru.models), "ready": True}


class LocalMultiplexedHandle:
    def __init__(self, target: LocalMultiplexedEncoder, model_id: str | None = None) -> None:
        self._target = target
        self._model_id = model_id
        self.calls: list[tuple[str, str | None]] = []

    def options(self, multiplexed_model_id: str) -> LocalMultiplexedHandle:
        handle = LocalMultiplexedHandle(self._target, multiplexed_model_id)
        handle.calls = self.calls
        return handle

    def __getattr__(self, name: str) -> LocalMethod:
        method = getattr(self._target, name)
        self.calls.append((name, self._model_id))
        return LocalMethod(lambda *args, **kwargs: method(self._model_id, *args, **kwargs))

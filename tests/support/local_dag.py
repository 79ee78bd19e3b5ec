"""The clipfleet DAG without Ray: the same service and plain classes, with in-process handles.

Unit tests (v1 API, compat routes) drive the real FastAPI app over this; integration tests
run the same app under a real Ray Serve.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipfleet.config import AppArgs, ClipModelSpec, FetchLimits, ProfileSpec, ResNetSpec
from clipfleet.fetch import ImageFetcher, ImageSource
from clipfleet.models.clip import load_clip_model
from clipfleet.models.device import choose_device
from clipfleet.models.resnet import ResNetModel
from clipfleet.scoring import clip_scores, zero_shot
from clipfleet.service import ClipfleetService
from tests.support.images import LOOPBACK_ALLOWED_PORTS


class LocalResponse:
    """Awaitable like a DeploymentResponse; starts running at once."""

    def __init__(self, coroutine) -> None:
        self._task = asyncio.ensure_future(coroutine)

    def __await__(self):
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


class LocalMethod:
    def __init__(self, function) -> None:
        self._function = function

    def remote(self, *args, **kwargs) -> LocalResponse:
        async def run():
            resolved = [await arg if isinstance(arg, LocalResponse) else arg for arg in args]
            result = self._function(*resolved, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return LocalResponse(run())


class LocalHandle:
    """`handle.method.remote(...)` over a plain object, resolving LocalResponse arguments."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> LocalMethod:
        return LocalMethod(getattr(self._target, name))


class LocalClipEncoder:
    def __init__(self, spec: ClipModelSpec) -> None:
        self.model = load_clip_model(spec, choose_device("cpu"), random_weights=False)

    def embed_image(self, image: np.ndarray, timed: bool = False):
        started = time.perf_counter()
        vector = self.model.embed_images([image])[0]
        return (vector, time.perf_counter() - started) if timed else vector

    def embed_text(self, text: str) -> np.ndarray:
        return self.model.encode_texts([text])[0]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_texts(texts)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.model.count_tokens(texts)

    def describe(self) -> dict:
        return {
            **self.model.info.as_dict(),
            "logit_scale": self.model.logit_scale,
            "semantics": self.model.semantics.as_dict(),
            "ready": True,
        }


class LocalResNetEncoder:
    def __init__(self, spec: ResNetSpec) -> None:
        self.model = ResNetModel(spec, choose_device("cpu"), random_weights=False)

    def embed_image(self, image: np.ndarray, timed: bool = False):
        started = time.perf_counter()
        vector = self.model.embed_images([image])[0]
        return (vector, time.perf_counter() - started) if timed else vector

    def describe(self) -> dict:
        return {**self.model.info.as_dict(), "ready": True}


class LocalFetcher:
    def __init__(self, args: AppArgs) -> None:
        self._fetcher = ImageFetcher(args.fetch)

    async def fetch(self, source: ImageSource) -> np.ndarray:
        return await self._fetcher.load(source)

    def describe(self) -> dict:
        return {"ready": True}


class LocalScorer:
    def score_pair(self, image_embedding, text_embedding, semantics=None) -> dict:
        return clip_scores(image_embedding, text_embedding, semantics)[0]

    def tag(self, image_embedding, label_embeddings, labels, logit_scale, top_k, **kw) -> list:
        return zero_shot(image_embedding, label_embeddings, labels, logit_scale, top_k, **kw)

    def describe(self) -> dict:
        return {"ready": True}


def loopback_fetch(**overrides) -> FetchLimits:
    """Fetch limits that let image URLs reach the tests' own 127.0.0.1 servers: the SSRF guard
    refuses loopback and ports other than 80/443 unless the operator allow-lists name them
    (tests/unit/test_netguard.py proves the refusals without them)."""
    overrides.setdefault("allow_private_networks", ("127.0.0.1/32",))
    overrides.setdefault("allowed_ports", LOOPBACK_ALLOWED_PORTS)
    return FetchLimits(**overrides)


LOOPBACK_FETCH = loopback_fetch()


def tiny_app_args(model_dir: Path, **overrides) -> AppArgs:
    """Two profiles over the tiny on-disk models from tests.support.tiny_models; image URLs
    may point at 127.0.0.1 unless `fetch` is overridden."""
    overrides.setdefault("fetch", LOOPBACK_FETCH)
    open_clip_spec = ClipModelSpec(model=f"local-dir:{model_dir / 'open_clip'}")
    hf_spec = ClipModelSpec(backend="transformers", model=str(model_dir / "hf_clip"))
    resnet = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    profiles = {
        "fast": ProfileSpec(clip=open_clip_spec, resnet=resnet),
        "accurate": ProfileSpec(clip=hf_spec, resnet=resnet),
    }
    return AppArgs(profiles=profiles, **overrides)


def build_local_service(args: AppArgs) -> ClipfleetService:
    resnets: dict[ResNetSpec, LocalHandle] = {}
    for spec in args.profiles.values():
        resnets.setdefault(spec.resnet, LocalHandle(LocalResNetEncoder(spec.resnet)))
    return ClipfleetService(
        args,
        fetcher=LocalHandle(LocalFetcher(args)),
        scorer=LocalHandle(LocalScorer()),
        clip_encoders={
            name: {
                variant: LocalHandle(LocalClipEncoder(clip))
                for variant, clip in spec.variants.items()
            }
            for name, spec in args.profiles.items()
        },
        resnet_encoders={name: resnets[spec.resnet] for name, spec in args.profiles.items()},
        multiplexed_encoders=local_multiplexed(args),
    )


def local_multiplexed(args: AppArgs) -> dict:
    from tests.support.multiplexed import LocalMultiplexedEncoder, LocalMultiplexedHandle

    return {
        name: LocalMultiplexedHandle(LocalMultiplexedEncoder(name, spec))
        for name, spec in args.multiplexed.items()
    }

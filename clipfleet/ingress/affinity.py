"""Content-affinity routing (`args.affinity`; docs/configuration.md, "Content-affinity routing").

Each encoder replica keeps its own embedding LRU (clipfleet.replicas.cache). Spread at random over N
replicas, a repeated image or text is computed up to N times and every cache holds a copy of
the same hot set. With affinity, the content's key (the cache's own key: clipfleet.replicas.cache's
image_key / EncodedJpeg.key / EncodedImage.key / text_key) travels with the call as the
`route_key` keyword, and the deployment's router (clipfleet.ingress.affinity_router) sends it to the
replica that owns it by rendezvous hashing: the replica with the highest hash(key, replica
id). Adding or losing a replica moves only the keys that replica wins or owned. An owner with
`max_owner_queue` or more requests in flight is skipped: the call goes to the less loaded of
two random replicas (Serve's default policy), so a hot key never queues behind one replica.

The ingress side (AffinityHandle) computes the keys: a text's at once; a URL image's from the
fetcher's answer, which it reads (zero-copy from the object store on the same node) before
calling the encoder with the same object reference, so the pixels are not shipped twice; an
inline image's (base64, upload: sent to the encoder undecoded) from its bytes, base64 decoded
here only to be hashed (EncodedImage.key(), what the encoder caches it under: about 0.5 ms of
the ingress's CPU per 100 KB of base64, docs/configuration.md). A call with several images
(`embed_images`) goes to its first image's owner; a /v1/score pair (`embed_pair`) to its
image's. An inline image the encoder will refuse has no key: it goes where Serve sends it, and
the encoder gives the client's error.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from clipfleet.config import AppArgs, FetchLimits, clip_deployment_name, resnet_deployment_name
from clipfleet.errors import ClipfleetError
from clipfleet.images.fetch import ImageSource
from clipfleet.replicas.cache import image_key, text_key, texts_key
from clipfleet.replicas.images import OFF_LOOP_BYTES, inline_image

ROUTE_KEY = "route_key"
ROUTER_CLASS = "clipfleet.ingress.affinity_router.ContentAffinityRouter"


def owner_of(key: bytes, replica_ids: Iterable[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: the replica whose hash with `key` is the
    highest; None when there are no replicas."""
    best, best_score = None, b""
    for replica_id in replica_ids:
        score = hashlib.blake2b(key + replica_id.encode(), digest_size=8).digest()
        if best is None or score > best_score:
            best, best_score = replica_id, score
    return best


def choose_owner(key: bytes, queue_lens: Mapping[str, int | None], bound: int) -> str | None:
    """The owner of `key` among the replicas (id -> requests in flight, None when unknown), or
    None when its queue is at or over `bound` (the caller falls back to the least loaded)."""
    owner = owner_of(key, sorted(queue_lens))
    if owner is None:
        return None
    queue_len = queue_lens[owner]
    return owner if queue_len is None or queue_len < bound else None


def route_key_of(kwargs: Mapping[str, Any]) -> bytes | None:
    key = kwargs.get(ROUTE_KEY)
    return key if isinstance(key, bytes) else None


def image_route_key(image: Any) -> bytes:
    """The cache's key for a fetched image: a JPEG shipped undecoded (EncodedJpeg) has its own
    (`key()`, the file's hash); decoded pixels are hashed as the encoder would."""
    key = getattr(image, "key", None)
    return key() if callable(key) else image_key(image)


def inline_route_key(source: ImageSource, limits: FetchLimits) -> bytes | None:
    """The key an encoder caches an inline image under; None for one it will refuse."""
    try:
        return inline_image(source, limits).key()
    except ClipfleetError:
        return None


async def fetched(response: Any) -> tuple[Any, Any]:
    """(what to pass on to the encoder, the image): a DeploymentResponse's object reference
    and its value; otherwise (a handle that is not by reference, a local test response) the
    value twice."""
    if not getattr(response, "by_reference", False):
        image = await response
        return image, image
    ref = await response._to_object_ref()
    return ref, await ref


class _Method:
    def __init__(self, handle: Any, name: str, limits: FetchLimits) -> None:
        self._method = getattr(handle, name)
        self._name = name
        self._limits = limits

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self._name in ("embed_image", "embed_pair"):
            return self._image(*args, **kwargs)
        if self._name == "embed_images":
            return self._first_image(*args, **kwargs)
        if self._name == "embed_text":
            kwargs[ROUTE_KEY] = text_key(args[0])
        elif self._name == "embed_texts":
            kwargs[ROUTE_KEY] = texts_key(list(args[0]))
        return self._method.remote(*args, **kwargs)

    async def _image(self, image: Any, *args: Any, **kwargs: Any) -> Any:
        passed, key = await self._keyed(image)
        return await self._method.remote(passed, *args, **{**kwargs, ROUTE_KEY: key})

    async def _first_image(self, images: list[Any], *args: Any, **kwargs: Any) -> Any:
        """The call goes to its first image's owner (a one-image request's exactly): the
        ingress sends a request's images in one call only when they are all inline."""
        _, key = await self._keyed(images[0]) if images else (None, None)
        return await self._method.remote(images, *args, **{**kwargs, ROUTE_KEY: key})

    async def _keyed(self, image: Any) -> tuple[Any, bytes | None]:
        """(what the encoder is sent, the cache key it will use for it)."""
        if isinstance(image, ImageSource):
            size = len(image.base64 or image.data or b"")
            if size > OFF_LOOP_BYTES:
                return image, await asyncio.to_thread(inline_route_key, image, self._limits)
            return image, inline_route_key(image, self._limits)
        passed, value = await fetched(image)
        return passed, await asyncio.to_thread(image_route_key, value)  # hashlib frees the GIL


class AffinityHandle:
    """An encoder's handle whose embed_* calls carry their content's `route_key`. The image
    calls return a coroutine (they read or hash the image first): callers await them.
    `limits`: the application's fetch limits (an inline image over them gets no key)."""

    ROUTED = frozenset({"embed_image", "embed_images", "embed_pair", "embed_text", "embed_texts"})

    def __init__(self, handle: Any, limits: FetchLimits = FetchLimits()) -> None:
        self._handle = handle
        self._limits = limits

    def __getattr__(self, name: str) -> Any:
        if name in self.ROUTED:
            return _Method(self._handle, name, self._limits)
        return getattr(self._handle, name)

    def options(self, **options: Any) -> AffinityHandle:
        return AffinityHandle(self._handle.options(**options), self._limits)


def with_affinity(
    args: AppArgs, clip_encoders: dict[str, dict[str, Any]], resnet_encoders: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The encoders' handles, those of `args.affinity.deployments` wrapped in AffinityHandle."""
    chosen = set(args.affinity.deployments)

    def wrap(handle: Any, name: str) -> Any:
        return AffinityHandle(handle, args.fetch) if name in chosen else handle

    clips = {
        profile: {
            variant: wrap(handle, clip_deployment_name(profile, variant))
            for variant, handle in variants.items()
        }
        for profile, variants in clip_encoders.items()
    }
    resnets = {
        profile: wrap(handle, resnet_deployment_name(args.profiles[profile].resnet))
        for profile, handle in resnet_encoders.items()
    }
    return clips, resnets

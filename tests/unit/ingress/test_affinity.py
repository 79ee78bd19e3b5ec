"""Content-affinity routing without Ray: rendezvous ownership (adding or losing a replica moves
only its share), the fallback when the owner's queue is over the bound, the keys the ingress
attaches (the embedding cache's own), and the `affinity` config."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from clipfleet.config import AppArgs, FetchLimits, ResNetSpec
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.affinity import (
    ROUTE_KEY,
    AffinityHandle,
    choose_owner,
    image_route_key,
    inline_route_key,
    owner_of,
    with_affinity,
)
from clipfleet.models.device import choose_device
from clipfleet.replicas.cache import image_key, text_key, texts_key
from clipfleet.replicas.encoder import ResNetEncoder
from clipfleet.replicas.images import EncodedImage
from tests.support.handles import Answering, LocalHandle, LocalResponse

KEYS = [text_key(f"image {index}") for index in range(4000)]


def owners(replicas: list[str]) -> dict[bytes, str]:
    return {key: owner_of(key, replicas) for key in KEYS}


def test_each_replica_owns_a_fair_share():
    counts = {}
    for owner in owners(["a", "b", "c", "d"]).values():
        counts[owner] = counts.get(owner, 0) + 1
    assert set(counts) == {"a", "b", "c", "d"}
    assert all(800 < count < 1200 for count in counts.values())  # 1000 each, give or take


def test_adding_a_replica_moves_only_the_keys_it_wins():
    before, after = owners(["a", "b", "c"]), owners(["a", "b", "c", "d"])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "d" for key in moved)  # nothing moves between a, b and c
    assert 0.2 < len(moved) / len(KEYS) < 0.3  # about 1/4


def test_losing_a_replica_moves_only_its_keys():
    before, after = owners(["a", "b", "c", "d"]), owners(["a", "b", "d"])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved and all(before[key] == "c" for key in moved)
    assert len(moved) == sum(owner == "c" for owner in before.values())


def test_ownership_does_not_depend_on_replica_order():
    assert owners(["a", "b", "c"]) == owners(["c", "a", "b"])
    assert owner_of(KEYS[0], []) is None


def test_owner_over_the_bound_falls_back():
    key = KEYS[0]
    owner = owner_of(key, ["a", "b"])
    other = "b" if owner == "a" else "a"
    assert choose_owner(key, {owner: 3, other: 0}, bound=4) == owner
    assert choose_owner(key, {owner: None, other: 0}, bound=4) == owner  # unknown: try it
    assert choose_owner(key, {owner: 4, other: 0}, bound=4) is None
    assert choose_owner(key, {}, bound=4) is None


async def test_calls_carry_the_cache_key_of_their_content():
    inner = LocalHandle(Answering())
    handle = AffinityHandle(inner)
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)

    async def fetched():
        return pixels

    assert await handle.embed_image.remote(LocalResponse(fetched()), timed=True) == "embed_image"
    await handle.embed_text.remote("a cat")
    await handle.embed_texts.remote(["a cat", "a dog"])
    await handle.count_tokens.remote(["a cat"])
    keys = [call.kwargs.get(ROUTE_KEY) for call in inner.calls]
    assert keys == [image_key(pixels), text_key("a cat"), texts_key(["a cat", "a dog"]), None]
    image_call = inner.calls[0]
    assert image_call.args[0] is pixels and image_call.kwargs["timed"] is True


async def test_inline_images_carry_the_key_of_their_bytes():
    """base64 and upload alike: the hash of the bytes (EncodedImage.key()); a call with several
    images, its first's; a pair, its image's; an image the encoder will refuse, no key."""
    inner = LocalHandle(Answering())
    handle = AffinityHandle(inner, FetchLimits(max_bytes=1024))
    data = b"the bytes of an image"
    as_base64 = ImageSource(base64=base64.b64encode(data).decode())
    assert await handle.embed_image.remote(as_base64, timed=True) == "embed_image"
    await handle.embed_image.remote(ImageSource(data=data))
    await handle.embed_pair.remote(ImageSource(data=data), "a cat", timed=True)
    await handle.embed_images.remote([ImageSource(data=data), ImageSource(data=b"other")])
    await handle.embed_image.remote(ImageSource(base64="not base64 !"))
    await handle.embed_image.remote(ImageSource(data=b"x" * 1025))  # over max_bytes
    keys = [call.kwargs.get(ROUTE_KEY) for call in inner.calls]
    assert keys == [EncodedImage(data).key()] * 4 + [None, None]
    assert inner.calls[0].args == (as_base64,) and inner.calls[0].kwargs["timed"] is True
    assert inner.calls[2].args[1] == "a cat" and len(inner.calls[3].args[0]) == 2


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 90, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_an_inline_images_route_key_is_the_key_its_encoder_caches_it_under(model_dir):
    spec = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    encoder = ResNetEncoder(spec, choose_device("cpu"))
    keyed = LocalHandle(encoder)
    handle = AffinityHandle(keyed)
    data = jpeg()
    await handle.embed_image.remote(ImageSource(base64=base64.b64encode(data).decode()))
    (route_key,) = [call.kwargs.get(ROUTE_KEY) for call in keyed.calls]
    assert route_key is not None and encoder.cache.stats()["entries"] == 1
    assert encoder.cache.get(route_key) is not None  # what the encoder cached it under
    await handle.embed_images.remote([ImageSource(data=data)])  # an upload: the same key
    assert (
        keyed.calls[1].kwargs.get(ROUTE_KEY) == route_key and encoder.cache.stats()["entries"] == 1
    )


def test_a_jpeg_shipped_undecoded_routes_by_its_own_cache_key():
    class Jpeg:
        def key(self) -> bytes:
            return b"j-key"

    assert image_route_key(Jpeg()) == b"j-key"


def args(**affinity) -> AppArgs:
    profile = {"clip": {"model": "ViT-B-32"}, "resnet": {"model": "resnet50", "weights": "x"}}
    return AppArgs(profiles={"fast": profile}, affinity=affinity)


def test_config_names_encoder_deployments_only():
    assert args(deployments=["clip_fast", "resnet_resnet50"]).affinity.max_owner_queue == 8
    with pytest.raises(ValueError, match="clip_slow"):
        args(deployments=["clip_slow"])
    with pytest.raises(ValueError, match="Ingress"):
        args(deployments=["Ingress"])


def test_only_the_named_deployments_are_wrapped():
    chosen = args(deployments=["clip_fast"])
    clips, resnets = with_affinity(chosen, {"fast": {"stable": "h1"}}, {"fast": "h2"})
    assert isinstance(clips["fast"]["stable"], AffinityHandle) and resnets["fast"] == "h2"


class FakeReplica:
    """What the router reads of a RunningReplica."""

    def __init__(self, unique_id: str) -> None:
        from ray.serve._private.common import DeploymentID
        from ray.serve.request_router import ReplicaID

        self.replica_id = ReplicaID(unique_id, DeploymentID("clip_fast", "app"))
        self.max_ongoing_requests = 64
        self.node_id = self.availability_zone = None
        self.multiplexed_model_ids: set[str] = set()

    async def get_queue_len(self, deadline_s: float) -> int:
        return 0


async def test_the_serve_router_ranks_the_owner_first_and_skips_it_over_the_bound():
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
    from ray.serve.request_router import PendingRequest

    from clipfleet.ingress.affinity_router import ContentAffinityRouter

    router = ContentAffinityRouter(
        deployment_id=DeploymentID("clip_fast", "app"),
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    router.initialize_state(max_owner_queue=4)
    replicas = [FakeReplica(name) for name in "abc"]
    router.update_replicas(replicas)

    def request(**kwargs) -> PendingRequest:
        return PendingRequest([], kwargs, RequestMetadata(request_id="r", internal_request_id="r"))

    def ids(ranks) -> list[list[str]]:
        return [[replica.replica_id.unique_id for replica in rank] for rank in ranks]

    owner = owner_of(KEYS[0], "abc")
    ranks = ids(await router.choose_replicas(replicas, request(route_key=KEYS[0])))
    assert ranks[0] == [owner] and len(ranks) == 2  # then the power-of-two pair
    assert len(ids(await router.choose_replicas(replicas, request()))) == 1  # no key
    router.replica_queue_len_cache.update(replicas["abc".index(owner)].replica_id, 4)
    ranks = ids(await router.choose_replicas(replicas, request(route_key=KEYS[0])))
    assert len(ranks) == 1 and len(ranks[0]) == 2  # owner over the bound: the pair only


def test_the_service_routes_inline_images_score_pairs_and_tags_through_affinity(model_dir):
    """The real graph with in-process handles, clip_fast under affinity: a request's inline
    images (embed_images), a /v1/score pair (embed_pair) and a tag request (embed_image beside
    embed_texts) are served, and each image is cached under the key it was routed by."""
    from fastapi.testclient import TestClient

    from clipfleet.api.app import create_app
    from tests.support.images import image_base64
    from tests.support.local_dag import build_local_service, tiny_app_args

    service = build_local_service(tiny_app_args(model_dir, affinity={"deployments": ["clip_fast"]}))
    clip = service.profiles["fast"].clip["stable"]
    assert isinstance(clip, AffinityHandle)
    first, second, third = (image_base64(seed=seed) for seed in (1, 2, 3))
    with TestClient(create_app(service)) as client:
        body = {"images": [{"base64": first}, {"base64": second}], "profile": "fast"}
        assert client.post("/v1/embed/image", json=body).status_code == 200
        pair = {"pairs": [{"image": {"base64": third}, "text": "a cat"}], "profile": "fast"}
        assert client.post("/v1/score", json=pair).status_code == 200
        tag = {"image": {"base64": first}, "labels": ["car", "tree"], "profile": "fast"}
        response = client.post("/v1/tag", json=tag)
        assert response.status_code == 200, response.text
    cache = clip._handle._target.cache
    for image in (first, second, third):
        assert cache.get(inline_route_key(ImageSource(base64=image), FetchLimits())) is not None

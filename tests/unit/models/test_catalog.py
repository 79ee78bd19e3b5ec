"""Multiplexed profiles without Ray: which ids may load (the security cases), the LRU order
Ray uses (a bad id or a failing checkpoint never evicts a loaded model), per-model queues and
the v1 routes over the local DAG."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from clipfleet.api.app import create_app
from clipfleet.config import AppArgs, ClipModelSpec, MultiplexedProfileSpec
from clipfleet.errors import ForbiddenError, ModelLoadFailedError, ModelNotFoundError
from clipfleet.models.catalog import ModelCatalog
from clipfleet.models.clip import load_clip_model
from clipfleet.replicas.batching import ForwardScheduler
from clipfleet.replicas.multiplexed import REQUESTED_MODEL, MultiplexedClipEncoder
from tests.support.clock import Clock
from tests.support.fidelity import CPU
from tests.support.local_dag import build_local_service, tiny_app_args
from tests.support.tiny_models import make_open_clip_dir

IDS = ("alpha", "beta", "team/gamma")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three small checkpoints under `root`, one outside it, a broken one, and symlinks."""
    base = tmp_path_factory.mktemp("multiplexed")
    root = base / "root"
    for seed, model_id in enumerate(IDS, start=1):
        make_open_clip_dir(root / model_id, seed=seed)
    make_open_clip_dir(base / "outside", seed=9)
    broken = root / "broken"
    broken.mkdir()
    (broken / "open_clip_config.json").write_text(
        (root / "alpha" / "open_clip_config.json").read_text()
    )
    (broken / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint")
    os.symlink(base / "outside", root / "escape")  # a symlink out of the directory
    os.symlink(root / "alpha", root / "alias")  # a symlink that stays inside is fine
    return root


def spec_for(root, **overrides) -> MultiplexedProfileSpec:
    return MultiplexedProfileSpec(checkpoint_dir=str(root), max_models_per_replica=2, **overrides)


# -- which ids may load --------------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["../outside", "alpha/../../outside", "escape", "/etc"])
def test_escapes_are_forbidden(checkpoints, model_id):
    with pytest.raises(ForbiddenError) as caught:
        ModelCatalog("custom", spec_for(checkpoints)).resolve(model_id)
    assert caught.value.status == 403 and caught.value.param == "model"


@pytest.mark.parametrize("model_id", ["nope", "team", "org/unlisted"])
def test_unknown_ids_are_not_found(checkpoints, model_id):
    with pytest.raises(ModelNotFoundError) as caught:
        ModelCatalog("custom", spec_for(checkpoints)).resolve(model_id)
    assert caught.value.status == 404 and caught.value.type == "model_not_found"


def test_local_and_hub_ids_resolve(checkpoints):
    catalog = ModelCatalog("custom", spec_for(checkpoints, allowed_hub_ids=("org/listed",)))
    local = catalog.resolve("team/gamma")
    assert local.source == "local"
    assert local.spec.model == f"local-dir:{os.path.realpath(checkpoints / 'team' / 'gamma')}"
    alias = catalog.resolve("alias")
    assert alias.spec.model == f"local-dir:{os.path.realpath(checkpoints / 'alpha')}"
    hub = catalog.resolve("org/listed")
    assert hub.source == "hub" and hub.spec.model == "hf-hub:org/listed"


def test_an_ingress_without_the_checkpoint_volume_leaves_files_to_the_encoder(tmp_path):
    catalog = ModelCatalog("custom", spec_for(tmp_path / "not-mounted-here"))
    catalog.check("some/model")  # no files to look at: the encoder's resolve decides
    with pytest.raises(ForbiddenError):
        catalog.check("a/../../etc")
    with pytest.raises(ModelNotFoundError):
        catalog.resolve("some/model")


def test_transformers_profiles_load_save_pretrained_folders(model_dir):
    spec = MultiplexedProfileSpec(backend="transformers", checkpoint_dir=str(model_dir))
    encoder = MultiplexedClipEncoder("hf", spec, CPU)
    loaded = asyncio.run(encoder.model("hf_clip"))
    assert loaded.model.info.backend == "transformers" and loaded.source == "local"
    with pytest.raises(ModelNotFoundError):  # an open_clip folder is not a transformers model
        encoder.pool.catalog.resolve("open_clip")


def test_without_a_checkpoint_dir_only_the_allow_list_loads():
    catalog = ModelCatalog("custom", MultiplexedProfileSpec(allowed_hub_ids=("org/listed",)))
    with pytest.raises(ForbiddenError):
        catalog.resolve("org/other")
    with pytest.raises(ValueError, match="no model is allowed"):
        MultiplexedProfileSpec()


def test_config_rejects_clashing_or_bad_multiplexed_names(model_dir, checkpoints):
    args = tiny_app_args(model_dir).model_dump()
    spec = spec_for(checkpoints).model_dump()
    with pytest.raises(ValueError, match="both a profile and a multiplexed profile"):
        AppArgs(**{**args, "multiplexed": {"fast": spec}})
    with pytest.raises(ValueError, match="lowercase"):
        AppArgs(**{**args, "multiplexed": {"Custom": spec}})
    with pytest.raises(ValueError):
        MultiplexedProfileSpec(checkpoint_dir="/x", max_models_per_replica=0)
    with pytest.raises(ValueError):
        MultiplexedProfileSpec(checkpoint_dir="/x", lru=3)  # unknown keys are rejected


# -- the LRU, in Ray's order ---------------------------------------------------------------
def test_lru_of_two_evicts_and_bad_ids_evict_nothing(checkpoints):
    encoder = MultiplexedClipEncoder("custom", spec_for(checkpoints), CPU)

    async def scenario():
        for model_id in ("alpha", "beta", "alpha"):
            await encoder.model(model_id)
        assert list(encoder.lru.models) == ["beta", "alpha"] and encoder.pool.hits == 1
        for bad_id, error in (("escape", ForbiddenError), ("nope", ModelNotFoundError)):
            with pytest.raises(error):
                await encoder.model(bad_id)
        with pytest.raises(ModelLoadFailedError, match="'broken'"):
            await encoder.model("broken")
        assert list(encoder.lru.models) == ["beta", "alpha"]  # nothing evicted
        assert encoder.lru.loader_calls == ["alpha", "beta"]  # Ray's loader never ran for them
        await encoder.model("team/gamma")  # the replica still loads good models
        assert list(encoder.lru.models) == ["alpha", "team/gamma"]

    asyncio.run(scenario())
    details = asyncio.run(encoder.describe())
    assert details["loads"] == 3 and details["evictions"] == 1 and details["load_failures"] == 1
    assert [entry["id"] for entry in details["resident"]] == ["alpha", "team/gamma"]
    assert "broken" in details["last_failures"]
    assert "broken" not in str(details["last_failures"]["broken"])  # no library text


def test_each_id_gets_its_own_checkpoints_vectors(checkpoints):
    encoder = MultiplexedClipEncoder("custom", spec_for(checkpoints), CPU)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for model_id in IDS:
        ours = asyncio.run(embed_with(encoder, model_id, image))
        direct = load_clip_model(
            ClipModelSpec(model=f"local-dir:{checkpoints / model_id}"), CPU, random_weights=False
        )
        np.testing.assert_allclose(ours, direct.embed_images([image])[0], atol=1e-5)


async def embed_with(encoder: MultiplexedClipEncoder, model_id: str, image: np.ndarray):
    REQUESTED_MODEL.set(model_id)  # what Serve's multiplexed_model_id carries
    return await encoder.embed_image(image)


def test_concurrent_requests_for_a_new_id_load_it_once(checkpoints):
    loads = []

    def counting_load(resolved):
        loads.append(resolved.model_id)
        return load_clip_model(resolved.spec, CPU, False)

    encoder = MultiplexedClipEncoder("custom", spec_for(checkpoints), CPU, load=counting_load)

    async def scenario():
        await asyncio.gather(*(encoder.model("beta") for _ in range(4)))

    asyncio.run(scenario())
    assert loads == ["beta"]


def test_scheduler_keeps_model_ids_in_their_own_forwards():
    calls = []

    def forward_for(model_id):
        def forward(items):
            calls.append((model_id, list(items)))
            return [f"{model_id}:{item}" for item in items]

        return forward

    async def scenario():
        scheduler = ForwardScheduler({}, max_batch_size=8)
        results = await asyncio.gather(
            scheduler.run("text", ["x", "y"], "a", forward_for("a")),
            scheduler.run("text", ["z"], "b", forward_for("b")),
            scheduler.run("text", ["w"], "a", forward_for("a")),
        )
        assert scheduler.pending() == {}  # drained queues of models are dropped
        return results

    results = asyncio.run(scenario())
    assert results == [["a:x", "a:y"], ["b:z"], ["a:w"]]
    own_items = {"a": {"x", "y", "w"}, "b": {"z"}}
    assert all(set(items) <= own_items[model_id] for model_id, items in calls)  # never mixed


# -- the v1 routes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mux(model_dir, checkpoints):
    args = tiny_app_args(model_dir)
    args = AppArgs(
        **{**args.model_dump(), "multiplexed": {"custom": spec_for(checkpoints).model_dump()}}
    )
    service = build_local_service(args)
    with TestClient(create_app(service)) as client:
        yield client, service.multiplexed["custom"]


def test_model_field_and_header_pick_a_model(mux):
    client, _ = mux
    by_field = client.post("/v1/embed/text", json={"texts": ["a cat"], "model": "custom:alpha"})
    assert by_field.status_code == 200, by_field.text
    assert by_field.json()["model"] == "custom:alpha" and by_field.json()["profile"] == "custom"
    by_header = client.post(
        "/v1/embed/text", json={"texts": ["a cat"]}, headers={"X-Clipfleet-Model": "custom:beta"}
    )
    assert by_header.status_code == 200 and by_header.json()["model"] == "custom:beta"
    assert by_header.json()["embeddings"] != by_field.json()["embeddings"]
    tag = client.post("/v1/tag", json={"image": {"base64": _image()}, "model": "custom:alpha"})
    assert tag.status_code == 200 and tag.json()["activation"] == "softmax"


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"model": "custom:escape"}, 403, "forbidden"),
        ({"model": "custom:nope"}, 404, "model_not_found"),
        ({"model": "nosuch:alpha"}, 404, "model_not_found"),
        ({"model": "custom:../outside"}, 422, "invalid_request"),
        ({"model": "custom"}, 422, "invalid_request"),
        ({"model": "fast:alpha"}, 422, "invalid_request"),
        ({"model": "custom:alpha", "profile": "fast"}, 422, "invalid_request"),
        ({"model": "custom:team/../escape"}, 422, "invalid_request"),
    ],
)
def test_bad_model_names_get_the_envelope_and_never_reach_the_encoder(
    mux, body, status, error_type
):
    client, handle = mux
    before = list(handle.calls)
    response = client.post("/v1/embed/text", json={"texts": ["a cat"], **body})
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == error_type
    assert handle.calls == before  # no load attempt, no encoder call at all


def test_a_malformed_header_names_the_header(mux):
    client, _ = mux
    response = client.post(
        "/v1/embed/text", json={"texts": ["x"]}, headers={"X-Clipfleet-Model": "Custom:a"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "X-Clipfleet-Model"


def test_models_lists_the_multiplexed_pool(mux):
    client, _ = mux
    client.post("/v1/embed/text", json={"texts": ["x"], "model": "custom:alpha"})
    details = client.get("/v1/status").json()["multiplexed"]["custom"]
    assert details["max_models_per_replica"] == 2
    assert "alpha" in [entry["id"] for entry in details["replica"]["resident"]]
    assert {"loads", "hits", "evictions", "load_seconds_total"} <= set(details["replica"])


def _image() -> str:
    from tests.support.images import image_base64

    return image_base64()


def test_make_weights_prefetches_allowed_hub_ids(model_dir):
    from clipfleet.tools.weights import multiplexed_hub_specs

    args = tiny_app_args(model_dir).model_dump()
    spec = {"allowed_hub_ids": ["org/a"], "architecture": "ViT-B-32"}
    specs = multiplexed_hub_specs(AppArgs(**{**args, "multiplexed": {"custom": spec}}))
    assert specs == {ClipModelSpec(model="hf-hub:org/a", architecture="ViT-B-32")}


def test_a_copy_staged_by_a_racing_request_is_not_kept(checkpoints):
    encoder = MultiplexedClipEncoder("custom", spec_for(checkpoints), CPU)

    async def scenario():
        await encoder.model("alpha")
        # a second request checked residency before the first finished, and staged its own copy
        await encoder.pool._stage(encoder.pool.catalog.resolve("alpha"))
        assert "alpha" in encoder.pool._staging
        await encoder.model("alpha")
        assert encoder.pool._staging == {} and encoder.lru.loader_calls == ["alpha"]

    asyncio.run(scenario())


def test_model_detail_of_a_multiplexed_id(mux):
    client, _ = mux
    detail = client.get("/v1/models/custom:alpha")
    assert detail.status_code == 200, detail.text
    assert detail.json()["id"] == "custom:alpha" and detail.json()["multiplexed"]
    assert client.get("/v1/models/custom:nope").status_code == 404
    assert client.get("/v1/models/custom:escape").status_code == 403


def test_each_model_id_names_its_own_embedding_space(mux):
    """A multiplexed model's space follows its weights: two checkpoints, two spaces; an id that
    reaches the same checkpoint (a symlink inside the directory), the same space."""
    client, _ = mux

    def cohere_embed(model_id: str) -> dict:
        body = {"model": f"custom:{model_id}", "texts": ["a cat"], "embedding_types": ["int8"]}
        response = client.post("/v2/embed", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    beta, alias, alpha = (cohere_embed(model_id) for model_id in ("beta", "alias", "alpha"))
    assert alpha["model"] == "custom:alpha" and alpha["embeddings"]["int8"]
    assert alpha["embedding_space"] != beta["embedding_space"]
    assert alias["embedding_space"] == alpha["embedding_space"]
    assert (
        client.get("/v1/models/custom:alpha").json()["embedding_space"]
        == (alpha["embedding_space"])
    )
    rerank = {"model": "custom:beta", "query": "a cat", "documents": ["a dog", "a cat"]}
    answer = client.post("/v1/rerank", json=rerank).json()
    assert answer["embedding_space"] == beta["embedding_space"]


def test_models_idle_past_idle_ttl_s_are_unloaded(checkpoints):
    clock = Clock(100.0)
    spec = spec_for(checkpoints, idle_ttl_s=60)
    encoder = MultiplexedClipEncoder("custom", spec, CPU, clock=clock)

    async def scenario():
        await encoder.model("alpha")
        clock.advance(30)
        await encoder.model("beta")
        clock.advance(29)
        assert encoder.unload_idle() == []  # alpha idle 59 s: kept
        clock.advance(1)
        assert encoder.unload_idle() == ["alpha"]
        assert list(encoder.lru.models) == ["beta"]
        await encoder.model("beta")  # used again: its idle time starts over
        clock.advance(59)
        assert encoder.unload_idle() == []
        await encoder.model("alpha")  # an unloaded model loads again on demand
        assert encoder.lru.loader_calls == ["alpha", "beta", "alpha"]

    asyncio.run(scenario())
    details = asyncio.run(encoder.describe())
    assert details["idle_unloads"] == 1 and details["evictions"] == 0
    assert details["idle_ttl_s"] == 60


def test_idle_ttl_s_is_validated(checkpoints):
    assert spec_for(checkpoints, idle_ttl_s=None).idle_ttl_s is None  # never unloaded
    with pytest.raises(ValueError, match="idle_ttl_s"):
        spec_for(checkpoints, idle_ttl_s=0)

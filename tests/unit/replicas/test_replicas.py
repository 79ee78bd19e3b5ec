"""The replicas' plain classes (clipfleet.replicas) without Ray: cache, live config, faults,
the scheduler's merging, describe, the multiplexed pool, and the one graph wiring."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from pydantic import ValidationError

from clipfleet.config import AppArgs, MultiplexedProfileSpec, ResNetSpec
from clipfleet.errors import InvalidRequestError, ModelServingError, UnsupportedMediaTypeError
from clipfleet.images.fetch import ImageSource
from clipfleet.ingress.graph import wire
from clipfleet.replicas.encoder import ResNetEncoder
from clipfleet.replicas.fetcher import Fetcher
from clipfleet.replicas.multiplexed import REQUESTED_MODEL, MultiplexedClipEncoder
from clipfleet.replicas.scorer import Scorer
from clipfleet.scoring import ScoreSemantics
from tests.support.encoders import Batched
from tests.support.fidelity import CPU
from tests.support.images import image_base64

IMAGE = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def forwards(encoder, kind: str) -> int:
    return sum(encoder.batch_sizes[kind].values())


# -- cache -----------------------------------------------------------------------------------
def test_a_repeated_text_or_image_is_a_cache_hit_with_no_forward(clip):
    async def scenario():
        first = await clip.embed_text("a cat")
        again = await clip.embed_text("a cat")
        image = await clip.embed_image(IMAGE)
        image_again, seconds = await clip.embed_image(IMAGE.copy(), timed=True)
        return first, again, image, image_again, seconds

    first, again, image, image_again, seconds = asyncio.run(scenario())
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(image, image_again)
    assert forwards(clip, "text") == 1 and forwards(clip, "image") == 1
    assert clip.cache.stats()["hits"] == 2 and clip.cache.stats()["misses"] == 2
    assert 0 <= seconds < 60


def test_a_pairs_image_and_text_come_from_one_call(clip):
    """/v1/score's one encoder call per pair: the same vectors as the two separate calls; a
    bad image fails the pair with its own error, and the text side is not left running."""
    asyncio.run(clip.reconfigure({"cache": {"enabled": False}}))

    async def scenario():
        (image, text), seconds = await clip.embed_pair(IMAGE, "a cat", timed=True)
        separate = await clip.embed_image(IMAGE), await clip.embed_text("a cat")
        with pytest.raises(UnsupportedMediaTypeError):
            await clip.embed_pair(ImageSource(data=b"\xff\xd8 not a jpeg"), "a dog")
        await asyncio.sleep(0.2)
        return image, text, seconds, separate, clip.scheduler.pending()

    image, text, seconds, (image_alone, text_alone), pending = asyncio.run(scenario())
    np.testing.assert_allclose(image, image_alone, atol=1e-6)
    np.testing.assert_allclose(text, text_alone, atol=1e-6)
    assert 0 <= seconds < 60 and pending == {"image": 0, "text": 0}


def test_a_disabled_cache_runs_every_forward(clip):
    asyncio.run(clip.reconfigure({"cache": {"enabled": False}}))

    async def scenario():
        for _ in range(3):
            await clip.embed_text("a cat")

    asyncio.run(scenario())
    assert forwards(clip, "text") == 3


# -- reconfigure -----------------------------------------------------------------------------
def test_reconfigure_applies_sizes_to_the_batched_methods_scheduler_and_cache(clip):
    batched = Batched()
    user_config = {"max_batch_size": 3, "batch_wait_timeout_s": 0.02, "cache": {"max_entries": 5}}
    asyncio.run(clip.reconfigure(user_config, [batched]))
    assert batched.sizes == [("max_batch_size", 3), ("batch_wait_timeout_s", 0.02)]
    assert clip.scheduler.max_batch_size == 3
    assert clip.cache.config.max_entries == 5
    assert clip.config.model_dump()["max_batch_size"] == 3


def test_reconfigure_rejects_unknown_keys_and_keeps_the_config(clip):
    before = clip.config
    with pytest.raises(ValidationError):
        asyncio.run(clip.reconfigure({"max_batch_sise": 3}))
    assert clip.config is before


# -- faults ----------------------------------------------------------------------------------
def test_fault_knobs_fail_or_delay_requests(clip):
    asyncio.run(clip.reconfigure({"fault_error_ratio": 1.0}))
    with pytest.raises(ModelServingError, match="fault injected"):  # the variant's fault
        asyncio.run(clip.embed_text("a cat"))
    with pytest.raises(ModelServingError, match="fault injected"):
        asyncio.run(clip.embed_image(IMAGE))
    asyncio.run(clip.reconfigure({"fault_latency_s": 0.2}))
    started = time.perf_counter()
    asyncio.run(clip.embed_texts(["a dog"]))
    assert time.perf_counter() - started >= 0.19  # the event loop may wake a tick early


# -- the scheduler under the per-item hook ---------------------------------------------------
def test_concurrent_items_merge_into_fewer_forwards(clip):
    texts = [f"text number {index}" for index in range(8)]

    async def scenario():
        return await clip.embed_texts(texts)

    vectors = asyncio.run(scenario())
    assert vectors.shape[0] == 8
    sizes = clip.batch_sizes["text"]
    assert sum(size * count for size, count in sizes.items()) == 8
    assert forwards(clip, "text") < 8  # merged while a forward ran (or before the first)
    singly = np.stack([clip.model.encode_texts([text])[0] for text in texts])
    np.testing.assert_allclose(vectors, singly, atol=1e-5)


# -- describe --------------------------------------------------------------------------------
def test_describe_reports_model_config_batches_cache_and_process(clip):
    asyncio.run(clip.embed_text("a cat"))
    details = asyncio.run(clip.describe())
    assert details["replica_id"] == "r-1" and details["ready"] is True
    assert details["family"] == "clip" and details["forward_lease"] is None
    assert details["batch_sizes"] == {} and details["text_batch_sizes"] == {1: 1}
    assert details["config"]["max_batch_size"] == clip.config.max_batch_size
    assert details["pending"] == {"image": 0, "text": 0}
    assert details["cache"]["misses"] == 1 and details["warmup_seconds"] >= 0
    assert {"logit_scale", "semantics", "torch_threads", "process"} <= set(details)


def test_resnet_encoder_embeds_and_describes(model_dir):
    spec = ResNetSpec(model="resnet18", weights=str(model_dir / "resnet18.pt"))
    encoder = ResNetEncoder(spec, CPU)
    vector = asyncio.run(encoder.embed_image(IMAGE))
    np.testing.assert_allclose(vector, encoder.model.embed_images([IMAGE])[0], atol=1e-5)
    details = asyncio.run(encoder.describe())
    assert details["family"] == "resnet" and details["batch_sizes"] == {1: 1}
    assert details["replica_id"] == "local"


# -- fetcher and scorer ----------------------------------------------------------------------
def test_fetcher_decodes_and_reports_memory(tiny_args):
    fetcher = Fetcher(tiny_args.fetch, replica_id="f-1")

    async def scenario():
        try:
            return await fetcher.fetch(ImageSource(base64=image_base64())), await fetcher.memory()
        finally:
            await fetcher.close()

    image, memory = asyncio.run(scenario())
    assert image.dtype == np.uint8 and image.shape == (72, 96, 3)
    assert memory["rss_bytes"] > 0 and memory["decode_bytes_in_use"] == 0
    assert fetcher.describe() == {"ready": True, "replica_id": "f-1"}


def test_scorer_scores_pairs_and_tags():
    scorer = Scorer()
    vector = np.ones(4, np.float32) / 2
    assert asyncio.run(scorer.score_pair(vector, vector))["cosine"] == pytest.approx(1.0)
    labels = ["same", "opposite"]
    softmax = ScoreSemantics("softmax", 100.0)
    tags = asyncio.run(scorer.tag(vector, np.stack([vector, -vector]), labels, softmax, 2))
    assert [tag["label"] for tag in tags] == ["same", "opposite"]
    # SigLIP's semantics: each label on its own, sigmoid(scale * cos + bias), under a threshold
    sigmoid = ScoreSemantics("sigmoid", 10.0, -5.0)
    tags = asyncio.run(scorer.tag(vector, np.stack([vector, -vector]), labels, sigmoid, 2))
    assert [tag["label"] for tag in tags] == ["same"]
    assert tags[0]["confidence"] == pytest.approx(1 / (1 + np.exp(-5.0)))


# -- multiplexed -----------------------------------------------------------------------------
def test_multiplexed_needs_a_model_id_and_caches_per_model(two_checkpoints):
    spec = MultiplexedProfileSpec(checkpoint_dir=str(two_checkpoints), max_models_per_replica=1)
    encoder = MultiplexedClipEncoder("custom", spec, CPU, replica_id="m-1")

    async def embed(model_id: str) -> np.ndarray:
        REQUESTED_MODEL.set(model_id)
        return await encoder.embed_text("a cat")

    with pytest.raises(InvalidRequestError) as caught:
        asyncio.run(encoder.embed_text("a cat"))
    assert caught.value.status == 422
    alpha, beta, alpha_again = (asyncio.run(embed(i)) for i in ("alpha", "beta", "alpha"))
    assert not np.allclose(alpha, beta)  # the same text, each model's own vector
    np.testing.assert_array_equal(alpha, alpha_again)  # cached: alpha was evicted, not its vector
    details = asyncio.run(encoder.describe())
    assert details["loads"] == 3 and details["evictions"] == 2
    assert [entry["id"] for entry in details["resident"]] == ["alpha"]
    assert details["cache"]["hits"] == 1 and details["replica_id"] == "m-1"
    assert details["profile"] == "custom" and details["random_weights"] is False


# -- the graph -------------------------------------------------------------------------------
class RecordingBinder:
    def __init__(self) -> None:
        self.nodes: list[tuple] = []

    def _node(self, *node):
        self.nodes.append(node)
        return node

    def fetcher(self, limits):
        return self._node("fetcher")

    def scorer(self):
        return self._node("scorer")

    def clip_encoder(self, name, spec, limits):
        return self._node("clip", name)

    def resnet_encoder(self, name, spec, limits):
        return self._node("resnet", name)

    def multiplexed_encoder(self, name, profile, spec, limits):
        return self._node("multiplexed", name, profile)

    def ingress(self, args, graph):
        return graph


def test_wire_binds_each_node_once_and_shares_resnets(tiny_args, two_checkpoints):
    spec = {"checkpoint_dir": str(two_checkpoints)}
    args = AppArgs(**{**tiny_args.model_dump(), "multiplexed": {"custom": spec}})
    binder = RecordingBinder()
    fetcher, scorer, clips, resnets, multiplexed = wire(args, binder)
    assert sorted(binder.nodes) == [
        ("clip", "clip_accurate"),
        ("clip", "clip_fast"),
        ("fetcher",),
        ("multiplexed", "clip_custom_multiplexed", "custom"),
        ("resnet", "resnet_resnet18"),
        ("scorer",),
    ]
    assert clips == {
        "fast": {"stable": ("clip", "clip_fast")},
        "accurate": {"stable": ("clip", "clip_accurate")},
    }
    assert (fetcher, scorer) == (("fetcher",), ("scorer",))
    assert resnets["fast"] is resnets["accurate"]  # one shared deployment
    assert multiplexed == {"custom": ("multiplexed", "clip_custom_multiplexed", "custom")}

"""The one encoder core (clipfleet/replicas/core.py) that the plain and the multiplexed
encoders share: each test drives both, so a multiplexed path that diverged again fails here."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError

from clipfleet.config import ClipModelSpec, MultiplexedProfileSpec
from clipfleet.errors import ModelServingError
from clipfleet.models.clip import load_clip_model
from clipfleet.replicas.clip import ClipEncoder
from clipfleet.replicas.multiplexed import MultiplexedClipEncoder
from tests.support.encoders import GatedForwards, RecordingQueue, as_model, queued_behind_a_forward
from tests.support.fidelity import CPU

IMAGE = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)
CORE_FIELDS = {
    "replica_id", "ready", "config", "batch_sizes", "text_batch_sizes", "pending", "priority",
    "stall", "cache", "torch_threads", "forward_lease", "process", "device",
}  # fmt: skip


def mux(root, queue=None, **options) -> MultiplexedClipEncoder:
    spec = MultiplexedProfileSpec(checkpoint_dir=str(root), max_models_per_replica=2)
    extra = {"queue": queue} if queue else {}
    return MultiplexedClipEncoder("custom", spec, CPU, replica_id="m-1", **extra, **options)


def plain(root, queue=None) -> ClipEncoder:
    spec = ClipModelSpec(model=f"local-dir:{root / 'alpha'}")
    extra = {"queue": queue} if queue else {}
    return ClipEncoder(spec, CPU, replica_id="p-1", **extra)


ENCODERS = {"plain": plain, "multiplexed": mux}


def served(encoder, call):
    """`call()` as one request: for `alpha` on a multiplexed encoder."""
    return as_model("alpha", call)


@pytest.mark.parametrize("kind", ENCODERS)
def test_every_item_reaches_a_forward_through_the_cores_queue_object(two_checkpoints, kind):
    encoder = ENCODERS[kind](two_checkpoints, RecordingQueue)
    asyncio.run(served(encoder, lambda: encoder.embed_pair(IMAGE, "a cat")))
    asyncio.run(served(encoder, lambda: encoder.embed_texts(["a dog", "a bird"])))
    assert sorted(encoder.queue.kinds) == ["image", "text", "text", "text"]
    assert sum(encoder.batch_sizes["text"].values()) >= 1  # the core counted the forwards


@pytest.mark.parametrize("kind", ENCODERS)
def test_reconfigure_resizes_the_queue_and_rejects_unknown_keys(two_checkpoints, kind):
    encoder = ENCODERS[kind](two_checkpoints, RecordingQueue)
    config = {"max_batch_size": 3, "batch_wait_timeout_s": 0.02, "bulk_every": 5}
    assert encoder.scheduler.bulk_preempt  # the default
    asyncio.run(encoder.reconfigure({**config, "bulk_max_batch_size": 2, "bulk_preempt": False}))
    assert encoder.queue.batched.sizes == [("max_batch_size", 3), ("batch_wait_timeout_s", 0.02)]
    assert encoder.scheduler.max_batch_size == 3 and encoder.scheduler.bulk_every == 5
    assert encoder.scheduler.bulk_max_batch_size == 2 and not encoder.scheduler.bulk_preempt
    assert encoder.inputs.decoder.slots.turns.bulk_every == 5
    before = encoder.config
    with pytest.raises(ValidationError):
        asyncio.run(encoder.reconfigure({"max_batch_sise": 3}))
    assert encoder.config is before


@pytest.mark.parametrize("kind", ENCODERS)
def test_fault_drills_and_the_stall_guard_cover_both(two_checkpoints, kind):
    encoder = ENCODERS[kind](two_checkpoints)
    asyncio.run(served(encoder, lambda: encoder.embed_text("a cat")))
    assert encoder.guard.slowest_forward_s > 0  # the forward ran under the stall guard
    asyncio.run(encoder.reconfigure({"fault_error_ratio": 1.0}))
    for call in (lambda: encoder.embed_texts(["a dog"]), lambda: encoder.embed_image(IMAGE)):
        with pytest.raises(ModelServingError, match="fault injected"):  # the variant's fault
            asyncio.run(served(encoder, call))


@pytest.mark.parametrize("kind", ENCODERS)
def test_describe_holds_the_cores_fields_for_both(two_checkpoints, kind):
    encoder = ENCODERS[kind](two_checkpoints)
    asyncio.run(served(encoder, lambda: encoder.embed_pair(IMAGE, "a cat")))
    details = asyncio.run(encoder.describe())
    assert set(details) >= CORE_FIELDS
    assert details["text_batch_sizes"] == {1: 1} and details["batch_sizes"] == {1: 1}
    assert details["cache"]["misses"] == 2 and details["config"] == encoder.config.model_dump()


def test_plain_and_multiplexed_give_one_models_vectors_alike(two_checkpoints):
    """The same checkpoint served plain and from a pool: the same preprocessing, tokenizing and
    forward, so the same vectors."""
    one, pooled = plain(two_checkpoints), mux(two_checkpoints)
    texts = ["a cat", "a photo of a dog"]
    for encoder in (one, pooled):
        vectors = asyncio.run(served(encoder, lambda e=encoder: e.embed_texts(texts)))
        image = asyncio.run(served(encoder, lambda e=encoder: e.embed_image(IMAGE)))
        np.testing.assert_allclose(vectors, one.model.encode_texts(texts), atol=1e-5)
        np.testing.assert_allclose(image, asyncio.run(one.embed_image(IMAGE)), atol=1e-5)


def test_a_batch_never_mixes_two_model_ids(two_checkpoints):
    """Texts for alpha and beta queue together behind a running forward: each model's forwards
    hold its own texts only (merged: fewer forwards than texts), each vector its model's."""
    gates = GatedForwards()
    encoder = mux(two_checkpoints, load=gates)
    texts = [f"text {n}" for n in range(4)]

    async def scenario():
        for model_id in ("alpha", "beta"):
            await encoder.model(model_id)
        calls = [
            as_model(model_id, lambda t=text: encoder.embed_text(t))
            for text in texts
            for model_id in ("alpha", "beta")
        ]
        return await queued_behind_a_forward(encoder, gates, calls)

    vectors = asyncio.run(scenario())
    assert sum(gates.items("alpha")) == sum(gates.items("beta")) == len(texts)
    assert len(gates.batches) < 2 * len(texts)  # they did merge, each model with itself
    for model_id, offset in (("alpha", 0), ("beta", 1)):
        own = load_clip_model(
            ClipModelSpec(model=f"local-dir:{two_checkpoints / model_id}"), CPU, False
        )
        np.testing.assert_allclose(vectors[offset::2], own.encode_texts(texts), atol=1e-5)


def test_reconfigure_applies_to_every_pooled_model(two_checkpoints):
    gates = GatedForwards()
    encoder = mux(two_checkpoints, load=gates)

    async def scenario():
        await encoder.reconfigure({"max_batch_size": 2})
        calls = [
            as_model(model_id, lambda t=f"{model_id} {n}": encoder.embed_text(t))
            for n in range(5)
            for model_id in ("alpha", "beta")
        ]
        return await queued_behind_a_forward(encoder, gates, calls)

    asyncio.run(scenario())
    for model_id in ("alpha", "beta"):
        assert sum(gates.items(model_id)) == 5 and max(gates.items(model_id)) == 2


def test_describe_lists_the_resident_models_lru_first(two_checkpoints):
    encoder = mux(two_checkpoints)
    for model_id in ("beta", "alpha"):
        asyncio.run(as_model(model_id, lambda: encoder.embed_text("a cat")))
    details = asyncio.run(encoder.describe())
    assert [entry["id"] for entry in details["resident"]] == ["beta", "alpha"]
    assert details["multiplexed"] is True and details["text_batch_sizes"] == {1: 2}
    assert details["cache"]["entries"] == 2  # one text, keyed per model

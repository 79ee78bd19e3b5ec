"""The embedding LRU: hits by content, bounds by entries and bytes, off switch."""

from __future__ import annotations

import numpy as np

from clipfleet.replicas.cache import CacheConfig, EmbeddingCache, image_key, text_key


def test_hits_by_content_not_identity():
    cache = EmbeddingCache(CacheConfig())
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    cache.put(image_key(pixels), np.ones(8))
    assert cache.get(image_key(pixels.copy())) is not None
    assert cache.get(image_key(pixels.reshape(2, 8, 3))) is None  # same bytes, other shape
    assert cache.get(text_key("a cat")) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_lru_bounds_by_entries_and_bytes():
    cache = EmbeddingCache(CacheConfig(max_entries=2, max_bytes=10_000))
    for name in ("a", "b", "c"):
        cache.put(text_key(name), np.zeros(4))
    assert cache.get(text_key("a")) is None and cache.get(text_key("c")) is not None
    small = EmbeddingCache(CacheConfig(max_entries=100, max_bytes=64))
    for name in ("a", "b", "c"):
        small.put(text_key(name), np.zeros(8))  # 32 bytes each
    assert small.stats()["entries"] == 2 and small.bytes <= 64


def test_recently_used_entries_survive():
    cache = EmbeddingCache(CacheConfig(max_entries=2))
    cache.put(text_key("a"), np.zeros(2))
    cache.put(text_key("b"), np.zeros(2))
    cache.get(text_key("a"))
    cache.put(text_key("c"), np.zeros(2))
    assert cache.get(text_key("a")) is not None and cache.get(text_key("b")) is None


def test_disabled_cache_stores_nothing():
    cache = EmbeddingCache(CacheConfig(enabled=False))
    cache.put(text_key("a"), np.zeros(2))
    assert cache.get(text_key("a")) is None and cache.stats()["entries"] == 0


def test_encoder_config_carries_cache_settings():
    from clipfleet.config import EncoderConfig

    assert EncoderConfig().cache.enabled
    assert not EncoderConfig(cache={"enabled": False}).cache.enabled

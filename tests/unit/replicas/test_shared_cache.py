"""The shared second-level cache against a real Redis server (tests/support/redis_server.py):
hits across clients, TTL, the server's memory bound, and a stopped or silent server costing
no failure and a bounded delay (the breaker opens, then closes when the server is back)."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

from clipfleet.config import EncoderConfig, SharedCacheConfig
from clipfleet.replicas.cache import CacheConfig, EmbeddingCache, text_key
from clipfleet.replicas.embedding import cached_embedding
from clipfleet.replicas.shared_cache import Breaker, SharedCache, decode, encode
from tests.support.redis_server import PASSWORD, RedisServer

SPACE = "es-0123456789abcdef"


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("CLIPFLEET_CACHE_PASSWORD", PASSWORD)
    with RedisServer() as running:
        yield running


def config(url: str, **overrides) -> SharedCacheConfig:
    """Timeouts for a busy 2-core CI machine (the shipped default is 0.05 s)."""
    return SharedCacheConfig(url=url, **{"breaker_cooldown_s": 0.3, "timeout_s": 0.25, **overrides})


async def settle(cache: SharedCache) -> None:
    """Wait for the background writes."""
    while cache._writes:
        await asyncio.sleep(0.01)


async def test_a_vector_one_replica_computed_is_a_hit_on_another(server):
    first, second = SharedCache(config(server.url), SPACE), SharedCache(config(server.url), SPACE)
    vector = np.linspace(-1, 1, 512).astype(np.float32)
    assert await first.get(text_key("a cat"), "text") is None
    first.put_soon(text_key("a cat"), vector)
    await settle(first)
    found = await second.get(text_key("a cat"), "text")
    assert found is not None and found.dtype == np.float32
    assert np.abs(found - vector).max() < 1e-3  # float16 on the wire
    assert second.stats()["hits"] == 1 and first.stats()["misses"] == 1
    other_space = SharedCache(config(server.url), "es-ffffffffffffffff")
    assert await other_space.get(text_key("a cat"), "text") is None
    stored = server.client().get(b"clipfleet:v1:" + SPACE.encode() + b":" + text_key("a cat"))
    assert len(stored) == 1 + 512 * 2  # one dtype byte, then float16s: not JSON
    for cache in (first, second, other_space):
        await cache.close()


async def test_entries_expire_after_ttl(server):
    cache = SharedCache(config(server.url, ttl_s=1), SPACE)
    cache.put_soon(text_key("short-lived"), np.ones(8, dtype=np.float32))
    await settle(cache)
    assert await cache.get(text_key("short-lived"), "text") is not None
    await asyncio.sleep(1.2)
    assert await cache.get(text_key("short-lived"), "text") is None
    await cache.close()


async def test_max_bytes_bounds_the_server_and_evicts_the_oldest(server):
    budget = 2 * 1024 * 1024
    cache = SharedCache(config(server.url, max_bytes=budget, float16=False), SPACE)
    assert await cache.get(text_key("first"), "text") is None  # connects, sets maxmemory
    assert server.client().config_get("maxmemory")["maxmemory"] == str(budget)
    for index in range(1200):  # 1200 x 4 KiB: twice the budget
        cache.put_soon(text_key(f"item {index}"), np.full(1024, index, dtype=np.float32))
        if index % 100 == 99:
            await settle(cache)
    await settle(cache)
    client = server.client()
    assert client.info("stats")["evicted_keys"] > 0
    assert client.dbsize() * 4096 <= budget
    present = [client.exists(cache.prefix + text_key(f"item {i}")) for i in range(1200)]
    assert sum(present[:200]) < sum(present[-200:])  # LRU (Redis samples it): oldest go first
    assert await cache.get(text_key("item 1199"), "text") is not None
    await cache.close()


async def test_a_stopped_server_fails_nothing_and_the_breaker_opens_then_closes(server):
    cache = SharedCache(config(server.url, breaker_failures=3), SPACE)
    local = EmbeddingCache(CacheConfig(), cache)
    computed = []

    async def compute(text: str) -> np.ndarray:
        computed.append(text)
        return np.ones(4, dtype=np.float32)

    await cached_embedding(local, text_key("x"), "text", lambda: compute("x"))
    await settle(cache)
    server.stop()
    started = time.monotonic()
    for index in range(20):  # every one computed, none failed
        name = f"down {index}"
        await cached_embedding(local, text_key(name), "text", lambda n=name: compute(n))
    elapsed = time.monotonic() - started
    assert len(computed) == 21
    assert cache.breaker.state == "open" and cache.stats()["skipped"] >= 15
    assert elapsed < 3 * 2 * cache.config.timeout_s + 0.5  # 3 failed calls, then none
    server.start()  # empty: no persistence
    await asyncio.sleep(0.4)  # the cooldown: the next call is the half-open trial
    assert await cache.get(text_key("x"), "text") is None
    assert cache.breaker.state == "closed"
    cache.put_soon(text_key("x"), np.ones(4, dtype=np.float32))
    await settle(cache)
    assert await cache.get(text_key("x"), "text") is not None
    await cache.close()


async def test_a_silent_server_costs_at_most_the_timeout():
    """A listener that accepts and never answers (a hung server): the lookup gives up."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}"
        cache = SharedCache(config(url, timeout_s=0.05), SPACE)
        started = time.monotonic()
        assert await cache.get(text_key("x"), "text") is None
        assert time.monotonic() - started < 0.5
        assert cache.stats()["errors"] == 1
        await cache.close()


def test_breaker_states():
    now = [0.0]
    breaker = Breaker(failures=2, cooldown_s=5, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 5.0
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # one trial at a time
    breaker.failure()  # the trial failed: open again, a new cooldown
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and breaker.state == "half_open"
    now[0] = 15.0  # that trial never reported (its caller was cancelled): another one
    assert breaker.allow() and not breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_vectors_round_trip_compactly():
    vector = np.random.default_rng(0).standard_normal(768).astype(np.float32)
    assert len(encode(vector, float16=False)) == 1 + 768 * 4
    assert np.array_equal(decode(encode(vector, float16=False)), vector)
    assert decode(b"?junk") is None


def test_config_keeps_passwords_out_of_the_yaml():
    with pytest.raises(ValueError, match="password"):
        SharedCacheConfig(url="redis://:secret@cache:6379")
    with pytest.raises(ValueError, match="redis://"):
        SharedCacheConfig(url="http://cache:6379")
    shared = EncoderConfig(cache={"shared": {"url": "valkey://cache.ns.svc:6379/0"}}).cache.shared
    assert shared.password_env == "CLIPFLEET_CACHE_PASSWORD" and shared.timeout_s <= 0.1

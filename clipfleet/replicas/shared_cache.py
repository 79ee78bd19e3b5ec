"""The embedding cache's shared second level, in Valkey / Redis (`cache.shared` of an
encoder's user_config; docs/configuration.md, "Shared cache").

Every replica of every encoder reads and writes one server, so a vector computed once is a hit
on every replica and survives restarts and scale-ups. Entry key: `clipfleet:v1:<space>:` plus
the local cache's content key (clipfleet.replicas.cache: the decoded pixels' or the text's hash),
where `<space>` is the model's `model_space` (clipfleet.models.embedding_space). The image pipeline
in front of the model (shrink sizes, fit, GPU decoding), which the served `embedding_space` adds, is
already in the content key: it hashes the pixels as shipped, or the JPEG file (`j` keys exist
only with gpu_decode). Value: one dtype byte (`h` float16, `f` float32) and the raw vector.

The server is an optimisation, never a dependency: each call is bounded by `timeout_s` (socket
and connect timeouts, one retry on a broken pooled connection, an asyncio deadline over all
of it); writes are
sent in the background; after `breaker_failures` failures in a row the breaker opens and the
server is not called for `breaker_cooldown_s`, then one call tries it (half-open) and closes
the breaker on success. Any failure is a miss.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from clipfleet.config import SharedCacheConfig
from clipfleet.observability import metrics

logger = logging.getLogger("ray.serve")

KEY_PREFIX = b"clipfleet:v1:"
MAX_PENDING_WRITES = 256  # background writes beyond this are dropped, not queued
WRITE_CONNECTIONS = 4  # background writes in flight at once (each holds a connection)
_DTYPES = {b"h": np.float16, b"f": np.float32}


class Breaker:
    """Closed -> open after `failures` failures in a row -> half-open after `cooldown_s` (one
    trial call) -> closed on its success, open again on its failure."""

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures_to_open = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = "closed"
        self.failures = 0
        self._opened_at = 0.0

    def allow(self) -> bool:
        """Whether a call may go to the server now. A trial that never reported (its caller
        was cancelled) is replaced by a new one after another cooldown."""
        if self.state == "closed":
            return True
        if self._clock() - self._opened_at >= self.cooldown_s:
            self._opened_at = self._clock()  # when this trial started
            if self.state == "open":
                self._set("half_open")  # this caller is the one trial
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        if self.state != "closed":
            self._set("closed")

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failures_to_open:
            self._opened_at = self._clock()
            if self.state != "open":
                self._set("open")

    def _set(self, state: str) -> None:
        logger.warning("shared embedding cache breaker: %s -> %s", self.state, state)
        self.state = state
        metrics.record_shared_cache_breaker(state)


def client_for(config: SharedCacheConfig) -> aioredis.Redis:
    """An asyncio client with short timeouts: the caller bounds every call."""
    url = (
        config.url.replace("valkey", "redis", 1) if config.url.startswith("valkey") else config.url
    )
    return aioredis.Redis.from_url(
        url,
        password=os.environ.get(config.password_env) or None,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        # one immediate retry on a broken connection (a pooled one the server closed, e.g.
        # after it restarted); none on a timeout: the call's deadline covers both tries
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=0,
    )


class SharedCache:
    def __init__(
        self, config: SharedCacheConfig, space: str, client: aioredis.Redis | None = None
    ) -> None:
        self.config = config
        self.prefix = KEY_PREFIX + space.encode() + b":"
        self.client = client if client is not None else client_for(config)
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_s)
        self.counts = {"hits": 0, "misses": 0, "errors": 0, "skipped": 0, "writes": 0}
        self._writes: set[asyncio.Task] = set()
        self._writing = asyncio.Semaphore(WRITE_CONNECTIONS)
        self._configured = config.max_bytes is None

    async def get(self, key: bytes, kind: str) -> np.ndarray | None:
        """The stored vector, or None: a miss, a failure, or an open breaker."""
        value = await self._call(lambda: self.client.get(self.prefix + key))
        if value is _SKIPPED or value is _FAILED:
            self._count("skipped" if value is _SKIPPED else "errors", kind)
            return None
        vector = None if value is None else decode(value)
        self._count("misses" if vector is None else "hits", kind)
        return vector

    def put_soon(self, key: bytes, vector: np.ndarray) -> None:
        """Store `vector` in the background (with the TTL); dropped when too many are pending
        or the breaker is open."""
        if len(self._writes) >= MAX_PENDING_WRITES or self.breaker.state == "open":
            return
        value = encode(vector, self.config.float16)
        task = asyncio.get_running_loop().create_task(self._put(key, value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: bytes, value: bytes) -> None:
        ttl = self.config.ttl_s
        async with self._writing:
            done = await self._call(lambda: self.client.set(self.prefix + key, value, ex=ttl))
        if done is _FAILED:
            metrics.record_shared_cache("write_errors", "any")
        elif done is not _SKIPPED:
            self.counts["writes"] += 1

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        if not self.breaker.allow():
            return _SKIPPED
        try:
            async with asyncio.timeout(self.config.timeout_s * 2):
                if not self._configured:
                    await self._apply_max_bytes()
                result = await command()
        except Exception as exc:  # any failure is a miss; the breaker counts it
            self.breaker.failure()
            logger.debug("shared embedding cache call failed: %r", exc)
            return _FAILED
        self.breaker.success()
        return result

    async def _apply_max_bytes(self) -> None:
        """The server's maxmemory and LRU eviction, once; a server that forbids CONFIG SET
        (most managed ones) keeps its own, and that is logged, not an error."""
        try:
            await self.client.config_set("maxmemory", str(self.config.max_bytes))
            await self.client.config_set("maxmemory-policy", "allkeys-lru")
        except aioredis.ResponseError as exc:
            logger.warning("shared cache: could not set maxmemory (%s); the server's applies", exc)
        self._configured = True

    def _count(self, result: str, kind: str) -> None:
        self.counts[result] += 1
        metrics.record_shared_cache(result, kind)

    def stats(self) -> dict[str, Any]:
        lookups = self.counts["hits"] + self.counts["misses"]
        return {
            **self.counts,
            "breaker": self.breaker.state,
            "hit_ratio": self.counts["hits"] / lookups if lookups else 0.0,
        }

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await self.client.aclose()


_FAILED = object()  # the call failed (counted by the breaker)
_SKIPPED = object()  # the breaker is open: no call was made


def encode(vector: np.ndarray, float16: bool) -> bytes:
    dtype, tag = (np.float16, b"h") if float16 else (np.float32, b"f")
    return tag + np.ascontiguousarray(vector, dtype=dtype).tobytes()


def decode(value: bytes) -> np.ndarray | None:
    dtype = _DTYPES.get(value[:1])
    if dtype is None:
        return None
    vector = np.frombuffer(value[1:], dtype=dtype).astype(np.float32)
    vector.setflags(write=False)
    return vector

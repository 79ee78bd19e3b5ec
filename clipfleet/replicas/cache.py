"""A bounded LRU of embeddings keyed by content hash (per encoder replica, so per variant), and
the content keys: the same keys name entries in the shared second level
(clipfleet.replicas.shared_cache) and route requests by content (clipfleet.ingress.affinity)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

from clipfleet.config import CacheConfig

__all__ = ["CacheConfig", "EmbeddingCache", "image_key", "text_key", "texts_key"]


def image_key(pixels: np.ndarray) -> bytes:
    """Hash of the decoded pixels (and shape): the same picture from any URL or encoding."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return b"i" + digest.digest()


def text_key(text: str) -> bytes:
    return b"t" + hashlib.blake2b(text.encode(), digest_size=16).digest()


def texts_key(texts: list[str]) -> bytes:
    """One key for a list of texts sent in one call (its route): the hash of their keys."""
    digest = hashlib.blake2b(digest_size=16)
    for text in texts:
        digest.update(text_key(text))
    return b"l" + digest.digest()


class EmbeddingCache:
    """`shared`: the second level (clipfleet.replicas.shared_cache.SharedCache), when configured."""

    def __init__(self, config: CacheConfig, shared: Any = None) -> None:
        self.config = config
        self.shared = shared
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> np.ndarray | None:
        if not self.config.enabled:
            return None
        vector = self._entries.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, key: bytes, vector: np.ndarray) -> None:
        if not self.config.enabled or key in self._entries:
            return
        vector = np.array(vector, dtype=np.float32)  # own copy, not a view of a batch
        vector.setflags(write=False)
        self._entries[key] = vector
        self.bytes += vector.nbytes
        while self._entries and (
            len(self._entries) > self.config.max_entries or self.bytes > self.config.max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes

    def stats(self) -> dict:
        lookups = self.hits + self.misses
        return {
            "enabled": self.config.enabled,
            "entries": len(self._entries),
            "bytes": self.bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": self.hits / lookups if lookups else 0.0,
            "shared": self.shared.stats() if self.shared is not None else None,
        }

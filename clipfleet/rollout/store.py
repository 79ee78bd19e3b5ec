"""Where state shared by every ingress replica of an application lives.

Under Ray this is Ray's internal key-value store, held by the GCS (the cluster's head
process): it outlives any replica, needs no extra deployment, and with GCS fault tolerance
(KubeRay's external Redis) outlives a head restart too. Calls block on a GCS round trip, so
callers run them off the event loop. Unit tests use MemoryStore.
"""

from __future__ import annotations

import threading
from typing import Protocol

NAMESPACE = "clipfleet"


class SharedStore(Protocol):
    #: False for a store only this process sees: nothing to wait for before routing
    shared: bool

    def put(self, key: str, value: bytes, overwrite: bool = True) -> bool:
        """Store `value`; False when `overwrite` is off and the key already exists."""

    def read_prefix(self, prefix: str) -> dict[str, bytes]: ...

    def delete(self, key: str) -> None: ...


class MemoryStore:
    """In-process; several TrafficManagers over one instance act as replicas of one app."""

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared
        self.available = True  # tests switch it off to play the holder dying
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _check(self) -> None:
        if not self.available:
            raise ConnectionError("shared store unavailable")

    def put(self, key: str, value: bytes, overwrite: bool = True) -> bool:
        self._check()
        with self._lock:
            if not overwrite and key in self._data:
                return False
            self._data[key] = value
            return True

    def read_prefix(self, prefix: str) -> dict[str, bytes]:
        self._check()
        with self._lock:
            return {k: v for k, v in self._data.items() if k.startswith(prefix)}

    def delete(self, key: str) -> None:
        self._check()
        with self._lock:
            self._data.pop(key, None)


class RayKVStore:
    """Ray's internal KV (GCS), in the `clipfleet` namespace."""

    shared = True

    def put(self, key: str, value: bytes, overwrite: bool = True) -> bool:
        from ray.experimental.internal_kv import _internal_kv_put

        existed = _internal_kv_put(key, value, overwrite, namespace=NAMESPACE)
        return overwrite or not existed

    def read_prefix(self, prefix: str) -> dict[str, bytes]:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

        found = {}
        for raw_key in _internal_kv_list(prefix, namespace=NAMESPACE):
            value = _internal_kv_get(raw_key, namespace=NAMESPACE)
            if value is not None:
                found[raw_key.decode()] = value
        return found

    def delete(self, key: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(key, namespace=NAMESPACE)

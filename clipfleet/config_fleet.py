"""The fleet-wide settings of issue 26: the shared second-level embedding cache (an encoder's
`user_config.cache.shared`) and content-affinity routing (`args.affinity`). Imported by
clipfleet.config, which validates the rest of serve_config.yaml."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SharedCacheConfig(StrictModel):
    """The second-level cache every replica shares, in Valkey / Redis
    (clipfleet.replicas.shared_cache, docs/configuration.md). The password never appears here: it is
    read from the environment variable `password_env` (a Kubernetes Secret in the cluster). A slow
    or absent server costs a lookup at most `timeout_s`; after `breaker_failures` failures in a row
    the cache is skipped for `breaker_cooldown_s`, then one call tries it again."""

    url: str
    ttl_s: int = Field(86_400, ge=1, le=30 * 86_400)
    # The server's memory budget (maxmemory, allkeys-lru), set by the replicas at connect when
    # the server allows CONFIG SET; null: leave the server's own setting.
    max_bytes: int | None = Field(None, ge=1024 * 1024)
    password_env: str = "CLIPFLEET_CACHE_PASSWORD"
    timeout_s: float = Field(0.05, gt=0.0, le=2.0)
    breaker_failures: int = Field(5, ge=1, le=1000)
    breaker_cooldown_s: float = Field(10.0, gt=0.0, le=3600.0)
    float16: bool = True  # vectors stored as float16 (half the bytes; cosine error < 1e-3)

    @field_validator("url")
    @classmethod
    def _url_without_password(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "valkey", "valkeys"):
            raise ValueError("url must be redis://, rediss://, valkey:// or valkeys://host:port")
        if parts.password is not None:
            raise ValueError("put no password in url: set it in the env var `password_env`")
        if not parts.hostname:
            raise ValueError("url needs a host")
        return url


class AffinityConfig(StrictModel):
    """Content-affinity routing (clipfleet.ingress.affinity): the encoder deployments named here get
    each image / text at the replica that owns its content hash (rendezvous hashing over the
    live replicas), so their embedding caches split the content instead of each caching all of
    it; a request whose owner has `max_owner_queue` or more requests in flight goes to the less
    loaded of two random replicas instead."""

    deployments: tuple[str, ...] = ()
    max_owner_queue: int = Field(8, ge=1, le=10_000)

"""The API's own settings in serve_config.yaml's args: `auth` (API keys, their priority
classes) and `cors` (browser clients). Validated with the rest of clipfleet.config.AppArgs."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from clipfleet.config_fleet import StrictModel
from clipfleet.ingress.priority import PriorityClass

# what clipfleet.api.middleware.auth.key_id makes of a key
KeyId = Annotated[str, StringConstraints(pattern=r"^key-[0-9a-f]{16}$")]


class AuthConfig(StrictModel):
    """API keys: comma-separated in the `api_keys_env` variable and/or one per line in
    `api_keys_file` (a mounted secret, re-read when it changes). No keys configured: no auth."""

    api_keys_env: str = "CLIPFLEET_API_KEYS"
    api_keys_file: str | None = None
    # Priority classes (docs/api.md): the highest class each key may use, by key id (never
    # the secret: `clipfleet key-id`); keys not listed, and requests without auth, get the default.
    priorities: dict[KeyId, PriorityClass] = {}
    default_priority: PriorityClass = "interactive"


class CorsConfig(StrictModel):
    """Browser clients (seed 003). No origins: no CORS headers at all."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    allow_headers: tuple[str, ...] = (
        *("Authorization", "Content-Type", "X-API-Key", "X-Clipfleet-Route-Key"),
        *("X-Clipfleet-Variant", "X-Clipfleet-Priority", "X-Request-ID"),
    )
    allow_credentials: bool = False
    max_age_s: int = Field(600, ge=0)

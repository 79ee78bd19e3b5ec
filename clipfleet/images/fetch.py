"""Image references -> decoded arrays: downloads over one pooled aiohttp session.

URLs go through the SSRF guard (clipfleet.images.netguard): every hop's host is checked, every
resolved address is checked and connected to as checked, and redirects are followed here, one
checked hop at a time. The whole download (all hops, body included) shares one deadline. With
tracing on, each hop is an HTTP client span (clipfleet.observability.tracing.http_client_traces).
Decodes run on a small thread pool of their own, at most `fetch.decode_budget_bytes` of
estimated decode memory at a time (clipfleet.images.decode_pool.BudgetedDecoder). Inline images
(base64, uploads) need no download: `inline_bytes` checks and decodes their text, wherever they are
read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

import aiohttp
import numpy as np
from aiohttp.abc import AbstractResolver
from yarl import URL

from clipfleet.config import FetchLimits
from clipfleet.errors import (
    InvalidRequestError,
    InvalidUrlError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from clipfleet.images.decode_pool import BudgetedDecoder
from clipfleet.images.netguard import AddressPolicy, GuardedResolver
from clipfleet.images.urls import host_problem, parse_image_url
from clipfleet.observability import tracing

_CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class ImageSource:
    """Exactly one of url, base64 text or raw bytes (a multipart upload)."""

    url: str | None = None
    base64: str | None = None
    data: bytes | None = None

    def __post_init__(self) -> None:
        given = sum(value is not None for value in (self.url, self.base64, self.data))
        if given != 1:
            raise InvalidRequestError("give exactly one of an image `url`, `base64` or a file")

    @property
    def inline(self) -> bool:
        """The image is in the request itself (no download)."""
        return self.url is None


_URL_SAFE = bytes.maketrans(b"-_", b"+/")


def decode_base64(text: str, limits: FetchLimits) -> bytes:
    """Standard or URL-safe base64 (RFC 4648), with or without line breaks (MIME wraps at 76)
    and padding; anything else is refused. Bounded before decoding: the text's length."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())
    if len(text) * 3 // 4 > limits.max_bytes:
        raise PayloadTooLargeError(f"the base64 image is larger than {limits.max_bytes} bytes")
    try:
        data = text.encode("ascii").translate(_URL_SAFE)
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError("`base64` is not valid base64 data") from exc


def inline_bytes(source: ImageSource, limits: FetchLimits) -> bytes:
    """An inline image's bytes (base64 decoded), within `max_bytes`."""
    if source.data is not None:
        if len(source.data) > limits.max_bytes:
            raise PayloadTooLargeError(f"the image is larger than {limits.max_bytes} bytes")
        return source.data
    if source.base64 is not None:
        return decode_base64(source.base64, limits)
    raise InvalidRequestError("the image is not inline: it has a url")


# One host's share of the connection pool: a batch of urls on one slow host can't take every
# connection from requests to other hosts, nor open dozens of sockets at once to one origin.
CONNECTIONS_PER_HOST = 16


class UrlFetcher:
    """Resolve an ImageSource to pixels: image URLs downloaded through the SSRF guard, inline
    bytes checked, both decoded within the decode budget. One instance per process; call
    `close()` at the end. (The Serve deployment that runs it is `ImageFetcher`,
    deployments/image_fetcher.py over clipfleet.replicas.fetcher.Fetcher.)"""

    def __init__(self, limits: FetchLimits, resolver: AbstractResolver | None = None) -> None:
        """`resolver`: the DNS to guard (default aiohttp's); tests pass a fake one."""
        self.limits = limits
        self.policy = AddressPolicy.from_lists(
            limits.allow_private_networks, limits.allowed_hosts, limits.allowed_ports
        )
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self.decoder = BudgetedDecoder(limits)

    @property
    def decode_budget(self):
        return self.decoder.budget

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be made inside the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.limits.connection_limit,
                    limit_per_host=CONNECTIONS_PER_HOST,
                    resolver=GuardedResolver(self.policy, self._resolver),
                ),
                timeout=aiohttp.ClientTimeout(total=self.limits.timeout_s),
                headers={"User-Agent": "clipfleet-image-fetcher/0.1"},
                trust_env=False,  # no proxies from the environment: we connect where we checked
                trace_configs=tracing.http_client_traces(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self.decoder.close()

    async def load(self, source: ImageSource) -> np.ndarray:
        return await self.decode(await self.read_bytes(source))

    async def decode(self, data: bytes) -> np.ndarray:
        """Header first (cheap), then the pixels once the budget has room for their cost."""
        return await self.decoder.decode(data)

    async def read_bytes(self, source: ImageSource) -> bytes:
        if source.inline:
            return inline_bytes(source, self.limits)
        return await self.download(source.url or "")

    async def download(self, url: str) -> bytes:
        parsed = parse_image_url(url)  # a malformed url never reaches DNS or a socket
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                return await self._follow(parsed)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                f"the image url did not answer within {self.limits.timeout_s} s"
            ) from exc
        except (aiohttp.InvalidURL, UnicodeError) as exc:  # UnicodeError: IDNA, in resolution
            raise InvalidUrlError("the image url is not a valid url") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the image url could not be fetched: {_failure(exc)}") from exc

    async def _follow(self, url: URL) -> bytes:
        """GET, following up to max_redirects redirects; each hop is checked before it is sent."""
        for _ in range(self.limits.max_redirects + 1):
            self.policy.check_url(url)
            async with self._client().get(url, allow_redirects=False) as resp:
                location = resp.headers.get("Location")
                if resp.status not in _REDIRECTS or not location:
                    return await self._body(resp)
            url = _next_hop(url, location)
        raise UpstreamError(f"the image url redirected more than {self.limits.max_redirects} times")

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.status >= 300:
            raise UpstreamError(f"the image url answered HTTP {resp.status}")
        self._check_content_type(resp.headers.get("Content-Type", ""))
        self._check_declared_length(resp.content_length)
        return await self._read_capped(resp)

    def _check_content_type(self, content_type: str) -> None:
        media_type = content_type.split(";")[0].strip().lower()
        if media_type and media_type not in self.limits.allowed_content_types:
            raise UnsupportedMediaTypeError(
                f"the image url served {media_type!r}, not an image type"
            )

    def _check_declared_length(self, length: int | None) -> None:
        if length is not None and length > self.limits.max_bytes:
            raise PayloadTooLargeError(
                f"the image at the url is {length} bytes; the limit is {self.limits.max_bytes}"
            )

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """Read the body, stopping as soon as it passes max_bytes (whatever the headers said)."""
        chunks: list[bytes] = []
        received = 0
        async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
            received += len(chunk)
            if received > self.limits.max_bytes:
                raise PayloadTooLargeError(
                    f"the image at the url is larger than {self.limits.max_bytes} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _failure(exc: aiohttp.ClientError) -> str:
    """What went wrong, in the client's terms (aiohttp's class names stay in the log)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
        return "the connection to its host failed"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "its server sent an invalid response"
    return "the download failed"


def _next_hop(url: URL, location: str) -> URL:
    """The redirect target (relative Locations resolve against the current hop)."""
    try:
        target = url.join(URL(location))
        target.host  # noqa: B018 - an invalid IDNA host raises here
    except (TypeError, ValueError) as exc:
        raise UpstreamError("the image url redirected to an invalid location") from exc
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise UpstreamError("the image url redirected to a non-http(s) location")
    if host_problem(target.raw_host) is not None:
        raise UpstreamError("the image url redirected to an invalid host name")
    return target

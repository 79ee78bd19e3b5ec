"""Image references -> decoded arrays: downloads over one pooled aiohttp session."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from clipfleet.config import FetchLimits
from clipfleet.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from clipfleet.imaging import decode_image

_CHUNK_BYTES = 64 * 1024
_ALLOWED_SCHEMES = ("http", "https")


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


def decode_base64(text: str, limits: FetchLimits) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > limits.max_bytes:
        raise PayloadTooLargeError(f"the base64 image is larger than {limits.max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError("`base64` is not valid base64 data") from exc


class ImageFetcher:
    """Resolve an ImageSource to pixels. One instance per process; call `close()` at the end."""

    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be made inside the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limits.connection_limit),
                timeout=aiohttp.ClientTimeout(total=self.limits.timeout_s),
                headers={"User-Agent": "clipfleet-image-fetcher/0.1"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def load(self, source: ImageSource) -> np.ndarray:
        data = await self.read_bytes(source)
        return await asyncio.to_thread(decode_image, data, self.limits)

    async def read_bytes(self, source: ImageSource) -> bytes:
        if source.data is not None:
            if len(source.data) > self.limits.max_bytes:
                raise PayloadTooLargeError(
                    f"the image is larger than {self.limits.max_bytes} bytes"
                )
            return source.data
        if source.base64 is not None:
            return decode_base64(source.base64, self.limits)
        return await self.download(source.url or "")

    async def download(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme not in _ALLOWED_SCHEMES or not parts.hostname:
            raise InvalidRequestError("the image url must be an absolute http:// or https:// url")
        try:
            async with self._client().get(url, max_redirects=self.limits.max_redirects) as resp:
                if resp.status >= 400:
                    raise UpstreamError(f"the image url answered HTTP {resp.status}")
                self._check_content_type(resp.headers.get("Content-Type", ""))
                self._check_declared_length(resp.content_length)
                return await self._read_capped(resp)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                f"the image url did not answer within {self.limits.timeout_s} s"
            ) from exc
        except aiohttp.TooManyRedirects as exc:
            raise UpstreamError(
                f"the image url redirected more than {self.limits.max_redirects} times"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"the image url could not be fetched: {type(exc).__name__}"
            ) from exc

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

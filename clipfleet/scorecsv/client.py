"""score-csv's requests: /v1/score with bounded concurrency, shared Retry-After back-off, a
bounded retry budget, per-row fallback, and results handed on in input order."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import httpx

from clipfleet.ingress import priority
from clipfleet.scorecsv.rows import Columns, Item, score_pair

RETRY_STATUSES = frozenset({429, 503})


class AuthError(Exception):
    """The server refused the API key (401/403): every row would fail, so the run stops."""


def error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        where = f" ({error['param']})" if error.get("param") else ""
        return f"HTTP {response.status_code} {error['type']}: {error['message']}{where}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def retry_after_s(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # an HTTP date or garbage: use the backoff


@dataclass
class RetryPolicy:
    retries: int = 5
    max_wait_s: float = 30.0
    base_backoff_s: float = 0.5

    def wait_s(self, attempt: int, response: httpx.Response) -> float:
        server = retry_after_s(response)
        backoff = self.base_backoff_s * 2**attempt * (0.5 + random.random())
        return min(server if server is not None else backoff, self.max_wait_s)


class ScoreClient:
    """/v1/score with bounded concurrency, shared back-off and per-row fallback."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        columns: Columns,
        profile: str | None,
        concurrency: int,
        retry: RetryPolicy,
    ) -> None:
        self.client = client
        self.columns = columns
        self.profile = profile
        self.limit = asyncio.Semaphore(max(1, concurrency))
        self.retry = retry
        self.resume_at = 0.0  # monotonic time before which no request is sent (Retry-After)
        self.retries_used = 0

    async def _post(self, body: dict) -> httpx.Response | str:
        """The final response (after retries of 503/429), or why the request failed."""
        for attempt in range(self.retry.retries + 1):
            delay = self.resume_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await self.client.post("/v1/score", json=body)
            except httpx.HTTPError as exc:
                return f"request failed: {type(exc).__name__}: {exc}"
            if response.status_code in (401, 403):
                raise AuthError(error_text(response))
            if response.status_code not in RETRY_STATUSES or attempt == self.retry.retries:
                return response
            self.retries_used += 1
            wait = self.retry.wait_s(attempt, response)
            self.resume_at = max(self.resume_at, time.monotonic() + wait)
        raise AssertionError("unreachable")

    async def score(self, items: list[Item]) -> list[Item]:
        """Fills in each item's score or error; returns the items."""
        async with self.limit:
            pairs = [score_pair(item, self.columns) for item in items]
            sendable = [item for item, pair in zip(items, pairs, strict=True) if pair]
            if not sendable:
                return items
            body: dict = {"pairs": [pair for pair in pairs if pair]}
            if self.profile:
                body["profile"] = self.profile
            outcome = await self._post(body)
            del body, pairs  # the images' base64 is not kept past the request
        if isinstance(outcome, httpx.Response) and outcome.status_code == 200:
            results = outcome.json()["results"]
            for item, result in zip(sendable, results, strict=True):
                item.score = result["clip_score"]
            return items
        row_level = isinstance(outcome, httpx.Response) and outcome.status_code < 500
        if row_level and outcome.status_code not in RETRY_STATUSES and len(sendable) > 1:
            # One bad row fails the whole request: send its rows one by one to find it.
            await asyncio.gather(*(self.score([item]) for item in sendable))
            return items
        message = outcome if isinstance(outcome, str) else error_text(outcome)
        for item in sendable:
            item.error = message
        return items


def chunked(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


async def scored_in_order(
    scorer: ScoreClient, items: Iterable[Item], size: int, window: int
) -> AsyncIterator[Item]:
    """Items with their outcome, in input order; at most `window` chunks started and unwritten."""
    pending: deque[asyncio.Task] = deque()
    try:
        for chunk in chunked(items, size):
            pending.append(asyncio.create_task(scorer.score(chunk)))
            while len(pending) >= window:
                for item in await pending.popleft():
                    yield item
        while pending:
            for item in await pending.popleft():
                yield item
    finally:
        for task in pending:
            task.cancel()


def client_for(args) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max(1, args.concurrency))
    # A CSV run is a bulk job: it must not slow interactive users (clipfleet/ingress/priority.py).
    headers = {priority.HEADER: args.priority}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    return httpx.AsyncClient(
        base_url=args.url, timeout=args.timeout, limits=limits, headers=headers
    )

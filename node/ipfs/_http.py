"""What the HTTP clients share: a lazily created aiohttp session and retries with backoff for
failures another try may fix (connection errors, timeouts, 502/503/504)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from node.ipfs.errors import BackendError

T = TypeVar("T")
RETRY_STATUSES = {502, 503, 504}


class Retryable(BackendError):
    """A failure worth another try."""


class HttpClient:
    def __init__(self, *, timeout: float, retries: int, backoff: float, session: aiohttp.ClientSession | None):
        if retries < 0 or timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self.retries = retries
        self.backoff = backoff
        self._session = session
        self._own_session = session is None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return await op()
            except (Retryable, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                if isinstance(e, aiohttp.ClientPayloadError):
                    raise  # the body broke mid-way: the caller maps it; retrying is its choice
                if attempt == self.retries:
                    raise BackendError(f"{what}: {type(e).__name__}: {e} (after {attempt + 1} tries)") from e
                await asyncio.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

"""The HTTP calls the gateway makes to one vLLM server (OpenAI-compatible API + dynamic LoRA API).

Errors are sorted by what the gateway does next: `ServerFailed` (connection refused, timeout,
5xx, a broken stream: take the server out of rotation), `AdapterMissing` (the server does not
know the adapter, e.g. it restarted: reload it) and `Refused` (a 4xx about the request or the
adapter itself: no other server will do better).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import aiohttp

# a vLLM answer (error bodies, model lists, SSE lines) larger than this is not a vLLM answer
MAX_BODY_BYTES = 4 << 20
MAX_SSE_LINE_BYTES = 1 << 20


class UpstreamError(Exception):
    """Root of the errors of a call to a vLLM server."""


class ServerFailed(UpstreamError):
    """The server did not answer, answered 5xx or broke the stream: out of rotation."""


class AdapterMissing(UpstreamError):
    """The server does not hold the adapter (404 on the model name)."""


class Refused(UpstreamError):
    """The server refused the request or adapter (4xx); `status` is the HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    # connect bounded separately: a dead host must not hold a request for the whole read timeout
    return aiohttp.ClientTimeout(total=None, connect=min(5.0, seconds), sock_read=seconds)


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    body = await resp.content.read(MAX_BODY_BYTES)
    try:
        err = json.loads(body)
        if isinstance(err, dict):
            inner = err.get("error", err)
            msg = inner.get("message") if isinstance(inner, dict) else inner
            return str(msg or body[:500].decode(errors="replace"))[:1000]
    except ValueError:
        pass
    return body[:500].decode(errors="replace")


async def _check(resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status < 400:
        return
    msg = await _error_text(resp)
    if resp.status >= 500:
        raise ServerFailed(f"{what}: HTTP {resp.status}: {msg}")
    if resp.status == 404:
        raise AdapterMissing(f"{what}: {msg}")
    raise Refused(f"{what}: {msg}", resp.status)


async def _request_json(session: aiohttp.ClientSession, method: str, url: str, timeout: float, **kw):
    try:
        async with session.request(method, url, timeout=_timeout(timeout), **kw) as resp:
            await _check(resp, f"{method} {url}")
            body = await resp.content.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                raise ServerFailed(f"{method} {url}: answer larger than {MAX_BODY_BYTES} bytes")
            return body
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ServerFailed(f"{method} {url}: {type(e).__name__}: {e}") from e


async def health(session: aiohttp.ClientSession, base: str, timeout: float) -> None:
    await _request_json(session, "GET", f"{base}/health", timeout)


async def models(session: aiohttp.ClientSession, base: str, timeout: float) -> tuple[str | None, int | None, dict[str, str]]:
    """(served base model name, its max_model_len, {LoRA adapter name: the path it was loaded from})."""
    body = await _request_json(session, "GET", f"{base}/v1/models", timeout)
    try:
        data = json.loads(body)["data"]
        base_name, max_len, loras = None, None, {}
        for card in data:
            if card.get("parent"):
                loras[str(card["id"])] = str(card.get("root"))
            elif base_name is None:
                base_name = str(card["id"])
                max_len = card.get("max_model_len") if isinstance(card.get("max_model_len"), int) else None
        return base_name, max_len, loras
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ServerFailed(f"GET {base}/v1/models: not a model list ({e})") from e


async def load_lora(session: aiohttp.ClientSession, base: str, name: str, path: str, timeout: float) -> None:
    """Load an adapter folder (read by the server from `path`). Already loaded counts as done."""
    try:
        await _request_json(session, "POST", f"{base}/v1/load_lora_adapter", timeout, json={"lora_name": name, "lora_path": path})
    except Refused as e:
        if "has already been loaded" not in str(e):
            raise


async def unload_lora(session: aiohttp.ClientSession, base: str, name: str, timeout: float) -> None:
    """Unload an adapter; one the server does not hold (it restarted) counts as unloaded."""
    try:
        await _request_json(session, "POST", f"{base}/v1/unload_lora_adapter", timeout, json={"lora_name": name})
    except AdapterMissing:
        pass


async def is_healthy(session: aiohttp.ClientSession, base: str, timeout: float) -> bool:
    try:
        await health(session, base, timeout)
        return True
    except UpstreamError:
        return False


async def stream_completion(
    session: aiohttp.ClientSession, base: str, payload: dict, timeout: float
) -> AsyncGenerator[dict, None]:
    """POST /v1/completions with stream=true; yields each SSE `data:` object until [DONE].
    Silence longer than `timeout` (a queued request waits for its first token; a busy server
    pauses) is tolerated while the server's /health (which checks vLLM's engine) answers; a dead
    engine or a hung server is ServerFailed. Closing the generator early closes the connection,
    which makes vLLM abort the request."""
    no_read_timeout = aiohttp.ClientTimeout(total=None, connect=min(5.0, timeout), sock_read=None)
    try:
        resp = await asyncio.wait_for(session.post(f"{base}/v1/completions", json=payload, timeout=no_read_timeout), timeout)
        async with resp:
            await _check(resp, f"completion on {base}")
            done = False
            while True:
                line = await _read_line(session, base, resp, timeout)
                if not line:
                    break
                if len(line) > MAX_SSE_LINE_BYTES:
                    raise ServerFailed(f"completion on {base}: SSE line larger than {MAX_SSE_LINE_BYTES} bytes")
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except ValueError as e:
                    raise ServerFailed(f"completion on {base}: bad SSE data ({e})") from e
                if not isinstance(obj, dict):
                    raise ServerFailed(f"completion on {base}: SSE data is not an object")
                if "error" in obj:  # vLLM reports errors after the headers in-band
                    err = obj["error"]
                    msg = err.get("message") if isinstance(err, dict) else err
                    raise ServerFailed(f"completion on {base}: {str(msg)[:500]}")
                yield obj
            if not done:
                raise ServerFailed(f"completion on {base}: the stream ended before [DONE]")
    except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, ValueError) as e:
        # ValueError: aiohttp's readuntil raises it for a line over its own limit
        raise ServerFailed(f"completion on {base}: {type(e).__name__}: {e}") from e


async def _read_line(session: aiohttp.ClientSession, base: str, resp: aiohttp.ClientResponse, timeout: float) -> bytes:
    """The next line; while none comes for `timeout` seconds, the server must pass /health.
    The read is never cancelled while waiting (a cancelled readuntil could drop half a line)."""
    read = asyncio.ensure_future(resp.content.readuntil(b"\n"))
    try:
        while True:
            done, _ = await asyncio.wait({read}, timeout=timeout)
            if done:
                return read.result()
            if not await is_healthy(session, base, min(timeout, 10.0)):
                raise ServerFailed(f"completion on {base}: silent for {timeout:.0f}s and /health fails")
    finally:
        if not read.done():
            read.cancel()

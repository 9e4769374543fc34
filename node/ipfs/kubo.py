"""Client for Kubo's RPC API (`/api/v0/...`) over aiohttp.

Every RPC is a POST (Kubo refuses GET). Errors come back as HTTP 500 with
`{"Message": ..., "Code": 0, "Type": "error"}` and become `KuboError`. What Kubo returns is
not trusted: `add_path` recomputes the CID locally, `fetch` walks the DAG block by block
(`/api/v0/block/get`) verifying each, and `cat` checks the bytes against the CID.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp

from node.ipfs._http import RETRY_STATUSES, HttpClient, Retryable
from node.ipfs.car import MAX_BLOCK_BYTES
from node.ipfs.cid import CID, CODEC_RAW
from node.ipfs.errors import (
    BackendError,
    BlockHashMismatch,
    ContentTooLarge,
    IntegrityError,
    KuboError,
    TruncatedContent,
    UnsupportedContent,
)
from node.ipfs.exporter import Progress, export_into
from node.ipfs.importer import cid_of_bytes, cid_of_path

DEFAULT_KUBO_URL = "http://127.0.0.1:5001"


def _bool(v: bool) -> str:
    return "true" if v else "false"


class KuboClient:
    name = "kubo"

    def __init__(
        self,
        url: str = DEFAULT_KUBO_URL,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        session: aiohttp.ClientSession | None = None,
    ):
        self.url = url.rstrip("/")
        self.http = HttpClient(timeout=timeout, retries=retries, backoff=backoff, session=session)

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- plumbing -------------------------------------------------------------------------
    async def _rpc(
        self, endpoint: str, params: dict | list | None = None, *, data_factory=None, read=None, limit: int | None = None
    ):
        """POST /api/v0/<endpoint>; `read(resp)` consumes a 200 body (default: whole body as bytes)."""
        url = f"{self.url}/api/v0/{endpoint}"

        async def op():
            data = data_factory() if data_factory else None
            async with self.http.session().post(url, params=params, data=data) as resp:
                if resp.status != 200:
                    await self._raise_for(resp, endpoint)
                if read is not None:
                    return await read(resp)
                if limit is None:
                    return await resp.read()
                body = bytearray()
                while chunk := await resp.content.read(min(1 << 20, limit + 1 - len(body))):
                    body += chunk
                    if len(body) > limit:
                        raise ContentTooLarge(f"Kubo {endpoint} answered more than {limit} bytes")
                return bytes(body)

        try:
            return await self.http.retrying(f"Kubo {endpoint} at {self.url}", op)
        except aiohttp.ClientPayloadError as e:
            raise TruncatedContent(f"Kubo {endpoint}: the response broke off: {e}") from e

    @staticmethod
    async def _raise_for(resp: aiohttp.ClientResponse, endpoint: str):
        text = (await resp.content.read(64 * 1024)).decode("utf-8", "replace")
        if resp.status in RETRY_STATUSES:
            raise Retryable(f"Kubo {endpoint}: HTTP {resp.status}: {text[:200]}")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and "Message" in body:
            raise KuboError(str(body["Message"]), body.get("Code"), resp.status)
        if resp.status == 404:
            raise BackendError(f"Kubo has no endpoint {endpoint} (HTTP 404): is {resp.url.origin()} a Kubo RPC API?")
        raise BackendError(f"Kubo {endpoint}: HTTP {resp.status}: {text[:200]}")

    async def _json(self, endpoint: str, params=None) -> Any:
        body = await self._rpc(endpoint, params, limit=16 * 1024 * 1024)
        try:
            return json.loads(body)
        except ValueError as e:
            raise BackendError(f"Kubo {endpoint}: answer is not JSON: {body[:200]!r}") from e

    # --- RPCs -------------------------------------------------------------------------------
    async def version(self) -> dict:
        return await self._json("version")

    async def add_path(
        self,
        path: str | os.PathLike,
        *,
        version: int = 1,
        raw_leaves: bool | None = None,
        wrap: bool = False,
        pin: bool = True,
        include_hidden: bool = False,
        verify: bool = True,
    ) -> str:
        """`ipfs add [-r] [-w]` through the RPC; returns the root CID after checking it locally."""
        path = Path(path)
        leaves_raw = (version == 1) if raw_leaves is None else raw_leaves
        parts = _multipart_entries(path, include_hidden)
        params = {
            "cid-version": str(version),
            "raw-leaves": _bool(leaves_raw),
            "wrap-with-directory": _bool(wrap),
            "pin": _bool(pin),
            "progress": "false",
        }

        opened: list = []

        def build() -> aiohttp.MultipartWriter:
            # Files are streamed from disk, not read into memory; rebuilt for every retry.
            mp = aiohttp.MultipartWriter("form-data")
            for rel, full in parts:
                if full is None:
                    part = mp.append(b"", {"Content-Type": "application/x-directory"})
                else:
                    fh = open(full, "rb")
                    opened.append(fh)
                    part = mp.append(fh, {"Content-Type": "application/octet-stream"})
                part.set_content_disposition("form-data", name="file", filename=rel)
            return mp

        async def read(resp: aiohttp.ClientResponse) -> list[dict]:
            lines = []
            async for raw in resp.content:
                if raw.strip():
                    lines.append(json.loads(raw))
            return lines

        try:
            lines = await self._rpc("add", params, data_factory=build, read=read)
        finally:
            for fh in opened:
                fh.close()
        for line in lines:
            if "Message" in line and line.get("Type") == "error":
                raise KuboError(str(line["Message"]), line.get("Code"), 200)
        if not lines or "Hash" not in lines[-1]:
            raise BackendError(f"Kubo add returned no CID for {path}")
        got = lines[-1]["Hash"]
        if verify:
            want = await asyncio.to_thread(
                cid_of_path, path, version, raw_leaves=leaves_raw, include_hidden=include_hidden, wrap=wrap
            )
            if CID.parse(got) != CID.parse(want):
                raise IntegrityError(f"Kubo says {path} is {got}, but it hashes to {want} (non-default chunker or layout?)")
        return got

    async def cat(self, cid: str, max_bytes: int) -> bytes:
        """A file's bytes via `/api/v0/cat`, checked against `cid` (Kubo's default chunking assumed;
        `fetch` verifies block by block and works for any layout)."""
        root = CID.parse(cid)
        data = await self._rpc("cat", {"arg": str(root)}, limit=max_bytes)
        flavours: list[bool | None]
        if root.codec == CODEC_RAW or root.version == 0:
            flavours = [None]
        else:
            flavours = [True, False]
        for raw in flavours:
            if CID.parse(await asyncio.to_thread(cid_of_bytes, data, root.version, raw_leaves=raw)) == root:
                return data
        raise BlockHashMismatch(f"the bytes Kubo sent for {cid} do not hash to it")

    async def ls(self, cid: str) -> list[dict]:
        """The links of a folder: [{"Name", "Hash", "Size", "Type"}] as `/api/v0/ls` lists them."""
        body = await self._json("ls", {"arg": str(CID.parse(cid))})
        try:
            return list(body["Objects"][0]["Links"] or [])
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(f"Kubo ls: unexpected answer shape: {str(body)[:200]}") from e

    async def block_get(self, cid: CID) -> bytes:
        return await self._rpc("block/get", {"arg": str(cid)}, limit=MAX_BLOCK_BYTES)

    async def fetch(self, cid: str, dest_dir, max_bytes: int, progress: Progress | None = None) -> Path:
        return await export_into(Path(dest_dir), CID.parse(cid), self.block_get, max_bytes, progress)

    async def pin(self, cid: str) -> None:
        root = CID.parse(cid)
        body = await self._json("pin/add", {"arg": str(root)})
        pins = body.get("Pins") if isinstance(body, dict) else None
        if not pins or all(CID.parse(p) != root for p in pins):
            raise BackendError(f"Kubo pin/add did not confirm {cid}: {str(body)[:200]}")


def _multipart_entries(path: Path, include_hidden: bool) -> list[tuple[str, Path | None]]:
    """(name as Kubo expects it, file path or None for a folder) in depth-first order: Kubo's
    multipart reader wants each folder's part followed at once by everything inside it."""
    st = path.lstat()
    if stat.S_ISREG(st.st_mode):
        return [(path.name, path)]
    if not stat.S_ISDIR(st.st_mode):
        raise UnsupportedContent(f"not a regular file or folder: {path}")
    out: list[tuple[str, Path | None]] = []

    def walk(folder: Path, rel: str) -> None:
        out.append((rel, None))
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") and not include_hidden:
                continue
            full = folder / name
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise UnsupportedContent(f"symlinks are not added (refused for safety): {full}")
            if stat.S_ISDIR(mode):
                walk(full, f"{rel}/{name}")
            elif stat.S_ISREG(mode):
                out.append((f"{rel}/{name}", full))
            else:
                raise UnsupportedContent(f"not a regular file or folder: {full}")

    walk(path, path.resolve().name)
    return out

"""Trustless HTTP gateway client (IPFS "Trustless Gateway" spec): fetch a whole DAG as a CAR
(`?format=car`, `application/vnd.ipld.car`) or block by block (`?format=raw`,
`application/vnd.ipld.raw`), verifying every block. Gateways are tried in order."""

from __future__ import annotations

import asyncio
import functools
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from node.ipfs._http import RETRY_STATUSES, HttpClient, Retryable
from node.ipfs.car import CAR_MEDIA_TYPE, MAX_BLOCK_BYTES, CarReader, stream_reader
from node.ipfs.cid import CID
from node.ipfs.errors import (
    BackendError,
    ContentNotFound,
    IntegrityError,
    MalformedBlock,
    OperationNotSupported,
    TruncatedContent,
)
from node.ipfs.exporter import Progress, export_into

RAW_MEDIA_TYPE = "application/vnd.ipld.raw"
CAR_OVERHEAD = 1024 * 1024  # DAG nodes and CAR framing on top of the file bytes


class _CarUnsupported(BackendError):
    pass


class GatewayClient:
    name = "gateway"

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        session: aiohttp.ClientSession | None = None,
        use_car: bool = True,
    ):
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("GatewayClient needs at least one gateway URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.use_car = use_car
        self.http = HttpClient(timeout=timeout, retries=retries, backoff=backoff, session=session)

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- ContentBackend -------------------------------------------------------------------
    async def add_path(self, path) -> str:
        raise OperationNotSupported("trustless gateways are read-only; add through Kubo or the embedded store")

    async def pin(self, cid: str) -> None:
        raise OperationNotSupported("trustless gateways cannot pin; pin through Kubo or the embedded store")

    async def fetch(self, cid: str, dest_dir, max_bytes: int, progress: Progress | None = None) -> Path:
        root = CID.parse(cid)
        errors: list[Exception] = []
        for url in self.urls:
            try:
                if self.use_car:
                    try:
                        return await self._fetch_car(url, root, Path(dest_dir), max_bytes, progress)
                    except _CarUnsupported:
                        pass  # fall back to block-by-block for this gateway
                return await export_into(Path(dest_dir), root, functools.partial(self._get_raw, url), max_bytes, progress)
            except (BackendError, IntegrityError) as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        integrity = [e for e in errors if isinstance(e, IntegrityError)]
        detail = "; ".join(f"{u}: {type(e).__name__}: {e}" for u, e in zip(self.urls, errors, strict=True))
        if integrity:
            raise type(integrity[0])(f"no gateway served verified {cid}: {detail}") from integrity[0]
        raise BackendError(f"no gateway served {cid}: {detail}") from errors[-1]

    # --- one gateway --------------------------------------------------------------------------
    async def _fetch_car(self, url: str, root: CID, dest_dir: Path, max_bytes: int, progress) -> Path:
        await asyncio.to_thread(dest_dir.mkdir, parents=True, exist_ok=True)
        spill = dest_dir / f".blocks-{secrets.token_hex(8)}"
        spill.mkdir()
        try:
            await self.http.retrying(f"GET {url}/ipfs/{root}?format=car", lambda: self._download_car(url, root, spill, max_bytes))

            async def get_block(cid: CID) -> bytes:
                try:
                    return (spill / str(cid.to_v1())).read_bytes()
                except FileNotFoundError:
                    raise TruncatedContent(f"block {cid} is missing from the CAR sent by {url}") from None

            return await export_into(dest_dir, root, get_block, max_bytes, progress)
        finally:
            shutil.rmtree(spill, ignore_errors=True)

    async def _download_car(self, url: str, root: CID, spill: Path, max_bytes: int) -> None:
        """Stream the CAR into one verified file per block under `spill`."""
        await asyncio.to_thread(_empty_folder, spill)  # a retry starts from nothing
        headers = {"Accept": f"{CAR_MEDIA_TYPE};version=1;order=dfs;dups=n"}
        async with self.http.session().get(f"{url}/ipfs/{root}", params={"format": "car"}, headers=headers) as resp:
            if resp.status in (400, 406, 501):
                raise _CarUnsupported(f"{url} does not serve CARs (HTTP {resp.status})")
            self._check_status(resp, url, root)
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith(CAR_MEDIA_TYPE):
                raise BackendError(f"{url} answered {ctype!r}, not a CAR: not a trustless gateway?")
            reader = CarReader(stream_reader(resp.content), max_bytes=max_bytes + max_bytes // 16 + CAR_OVERHEAD)
            try:
                roots = await reader.roots()
                if roots[:1] != [root]:
                    raise MalformedBlock(f"{url} sent a CAR for {[str(r) for r in roots]}, not {root}")
                async for cid, block in reader.blocks():
                    (spill / str(cid.to_v1())).write_bytes(block)
            except aiohttp.ClientPayloadError as e:
                raise TruncatedContent(f"CAR stream from {url} broke off: {e}") from e

    async def _get_raw(self, url: str, cid: CID) -> bytes:
        async def op() -> bytes:
            headers = {"Accept": RAW_MEDIA_TYPE}
            async with self.http.session().get(f"{url}/ipfs/{cid}", params={"format": "raw"}, headers=headers) as resp:
                self._check_status(resp, url, cid)
                try:
                    data = bytearray()
                    while chunk := await resp.content.read(MAX_BLOCK_BYTES + 1 - len(data)):
                        data += chunk
                        if len(data) > MAX_BLOCK_BYTES:
                            break
                except aiohttp.ClientPayloadError as e:
                    raise TruncatedContent(f"block {cid} from {url} broke off: {e}") from e
                if len(data) > MAX_BLOCK_BYTES:
                    raise MalformedBlock(f"{url} sent more than {MAX_BLOCK_BYTES} bytes for block {cid}")
                return bytes(data)

        return await self.http.retrying(f"GET {url}/ipfs/{cid}?format=raw", op)

    @staticmethod
    def _check_status(resp: aiohttp.ClientResponse, url: str, cid: CID) -> None:
        if resp.status == 200:
            return
        if resp.status in RETRY_STATUSES:
            raise Retryable(f"{url} answered HTTP {resp.status} for {cid}")
        if resp.status in (404, 410):
            raise ContentNotFound(f"{url} does not have {cid} (HTTP {resp.status})")
        raise BackendError(f"{url} answered HTTP {resp.status} for {cid}")


def _empty_folder(folder: Path) -> None:
    for entry in folder.iterdir():
        entry.unlink()

"""A small server speaking Kubo's RPC wire format, for tests (Kubo itself cannot be installed here).

Shapes are taken from Kubo's RPC reference (docs.ipfs.tech/reference/kubo/rpc): every call is a
POST under /api/v0/; `add` takes multipart parts named `file` whose filenames are URL-escaped
relative paths (folders as `application/x-directory` parts) and answers NDJSON
`{"Name","Hash","Size"}` lines, root last; errors are HTTP 500 with
`{"Message","Code":0,"Type":"error"}`. It stays honest by doing the real work with
`node.ipfs` (the embedded store computes every CID). `tamper_block` lets a test corrupt what
`block/get` returns.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from urllib.parse import unquote
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from node.ipfs.cid import CID, CODEC_RAW
from node.ipfs.dagpb import T_DIRECTORY, decode_node, decode_unixfs
from node.ipfs.errors import ContentNotFound, IpfsError
from node.ipfs.exporter import check_entry_name, export_dag
from node.ipfs.store import EmbeddedStore

VERSION = {"Version": "0.32.1", "Commit": "", "Repo": "16", "System": "amd64/linux", "Golang": "go1.23.3"}


class KuboState:
    def __init__(self, store: EmbeddedStore):
        self.store = store
        self.tamper_block: Callable[[CID, bytes], bytes] | None = None
        self.tamper_cat: Callable[[bytes], bytes] | None = None
        self.calls: list[str] = []
        self.queries: list[dict[str, str]] = []
        self.part_names: list[str] = []  # raw (still escaped) multipart file names of the last add
        self.fail_next: list[int] = []  # HTTP statuses to answer before serving normally (retry tests)
        self.delay = 0.0  # seconds to stall before answering (timeout tests)


STATE = web.AppKey("kubo_state", KuboState)


def _error(message: str, status: int = 500) -> web.Response:
    return web.json_response({"Message": message, "Code": 0, "Type": "error"}, status=status)


def _arg(request: web.Request) -> CID:
    arg = request.query.get("arg")
    if not arg:
        raise _HttpError("argument \"ipfs-path\" is required")
    arg = arg.removeprefix("/ipfs/")
    try:
        return CID.parse(arg)
    except IpfsError as e:
        raise _HttpError(f"invalid path \"{arg}\": {e}") from e


class _HttpError(Exception):
    pass


def _flag(request: web.Request, name: str, default: bool) -> bool:
    v = request.query.get(name)
    return default if v is None else v.lower() in ("true", "1", "")


async def _add(request: web.Request, st: KuboState) -> web.StreamResponse:
    version = int(request.query.get("cid-version", "0"))
    raw_leaves = _flag(request, "raw-leaves", version == 1)
    wrap = _flag(request, "wrap-with-directory", False)
    pin = _flag(request, "pin", True)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tops: list[str] = []
        reader = await request.multipart()
        st.part_names = []
        async for part in reader:
            st.part_names.append(part.filename or "")
            rel = unquote(part.filename or "")  # Kubo URL-escapes multipart file names
            parts = rel.split("/")
            for p in parts:
                check_entry_name(p)  # the test server refuses traversal too
            target = base.joinpath(*parts)
            if parts[0] not in tops:
                tops.append(parts[0])
            if part.headers.get("Content-Type") == "application/x-directory":
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                # a test server writing small temp files; add_path_sync below blocks the loop the same way
                with open(target, "wb") as fh:  # noqa: ASYNC230
                    while chunk := await part.read_chunk(1 << 16):
                        fh.write(chunk)
        if not tops:
            return _error("no files were given")
        if wrap and len(tops) != 1:
            return _error("this test server wraps exactly one top-level entry")
        lines: list[dict] = []

        def on_entry(name: str, cid: CID, tsize: int) -> None:
            lines.append({"Name": name, "Hash": str(cid), "Size": str(tsize)})

        for top in tops:
            cid = st.store.add_path_sync(
                base / top, version=version, raw_leaves=raw_leaves, wrap=wrap, include_hidden=True, on_entry=on_entry
            )
            if pin:
                await st.store.pin(cid)
    resp = web.StreamResponse(headers={"Content-Type": "application/json", "X-Chunked-Output": "1"})
    await resp.prepare(request)
    for line in lines:
        await resp.write(json.dumps(line).encode() + b"\n")
    await resp.write_eof()
    return resp


async def _cat(request: web.Request, st: KuboState) -> web.StreamResponse:
    cid = _arg(request)
    root = st.store.get_block_sync(cid)
    if cid.codec != CODEC_RAW and decode_unixfs(decode_node(root).data).kind == T_DIRECTORY:
        return _error("this dag node is a directory")
    with tempfile.TemporaryDirectory() as tmp:
        out = await export_dag(cid, st.store.get_block, Path(tmp) / "f", max_bytes=1 << 40)
        body = out.read_bytes()
        if st.tamper_cat:
            body = st.tamper_cat(body)
        return web.Response(body=body, headers={"Content-Type": "text/plain", "X-Stream-Output": "1"})


async def _ls(request: web.Request, st: KuboState) -> web.Response:
    cid = _arg(request)
    node = decode_node(st.store.get_block_sync(cid))
    links = []
    for link in node.links:
        if link.cid.codec == CODEC_RAW:
            kind, size = 2, len(st.store.get_block_sync(link.cid))
        else:
            fs = decode_unixfs(decode_node(st.store.get_block_sync(link.cid)).data)
            kind = 1 if fs.kind == T_DIRECTORY else 2
            size = 0 if kind == 1 else (fs.filesize or 0)
        links.append({"Name": link.name, "Hash": str(link.cid), "Size": size, "Type": kind, "Target": ""})
    return web.json_response({"Objects": [{"Hash": str(cid), "Links": links}]})


async def _block_get(request: web.Request, st: KuboState) -> web.Response:
    cid = _arg(request)
    block = st.store.get_block_sync(cid)
    if st.tamper_block:
        block = st.tamper_block(cid, block)
    return web.Response(body=block, headers={"Content-Type": "text/plain"})


async def _pin_add(request: web.Request, st: KuboState) -> web.Response:
    cid = _arg(request)
    await st.store.pin(str(cid))
    return web.json_response({"Pins": [str(cid)]})


async def _version(request: web.Request, st: KuboState) -> web.Response:
    return web.json_response(VERSION)


HANDLERS = {"add": _add, "cat": _cat, "ls": _ls, "block/get": _block_get, "pin/add": _pin_add, "version": _version}


async def _dispatch(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    endpoint = request.match_info["endpoint"]
    st.calls.append(endpoint)
    st.queries.append(dict(request.query))
    if request.method != "POST":
        return web.Response(status=405, text="405 - Method Not Allowed")
    handler = HANDLERS.get(endpoint)
    if handler is None:
        return web.Response(status=404, text="404 page not found")
    if st.fail_next:
        return web.Response(status=st.fail_next.pop(0), text="temporarily unavailable")
    if st.delay:
        await asyncio.sleep(st.delay)
    try:
        return await handler(request, st)
    except _HttpError as e:
        return _error(str(e))
    except ContentNotFound as e:
        return _error(f"block was not found locally (offline): {e}")
    except IpfsError as e:
        return _error(str(e))


def make_kubo_app(store: EmbeddedStore) -> web.Application:
    app = web.Application()
    app[STATE] = KuboState(store)
    app.router.add_route("*", "/api/v0/{endpoint:.+}", _dispatch)
    return app

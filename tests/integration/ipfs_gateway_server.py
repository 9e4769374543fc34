"""A local trustless gateway for tests: serves real blocks and CARs from an `EmbeddedStore`
(`GET /ipfs/<cid>?format=car|raw`, or the matching `Accept` header), with switches that make
it lie in the ways a hostile gateway could."""

from __future__ import annotations

from aiohttp import web

from node.ipfs.car import CAR_MEDIA_TYPE, car_section, encode_header, write_car
from node.ipfs.cid import CID, CODEC_RAW, encode_varint
from node.ipfs.errors import ContentNotFound, IpfsError
from node.ipfs.store import EmbeddedStore

RAW_MEDIA_TYPE = "application/vnd.ipld.raw"


class GatewayState:
    def __init__(self, store: EmbeddedStore):
        self.store = store
        # None | "flip" | "wrong_block" | "truncate" | "abort" | "missing" | "no_car" | "not_car" | "wrong_root"
        self.tamper: str | None = None
        self.requests: list[str] = []


STATE = web.AppKey("gateway_state", GatewayState)


def _first_leaf(blocks: list[tuple[CID, bytes]]) -> int:
    for i, (cid, _) in enumerate(blocks):
        if cid.codec == CODEC_RAW:
            return i
    return len(blocks) - 1


def _car_bytes(st: GatewayState, root: CID) -> bytes:
    blocks = list(st.store.iter_dag(root))
    mode = st.tamper
    if mode == "flip":
        i = _first_leaf(blocks)
        cid, data = blocks[i]
        blocks[i] = (cid, bytes([data[0] ^ 1]) + data[1:])
    elif mode == "wrong_block":  # a valid block, sent under another block's CID
        i = _first_leaf(blocks)
        blocks[i] = (blocks[i][0], blocks[0][1])
    elif mode == "missing":
        blocks.pop(_first_leaf(blocks))
    roots = [blocks[0][0] if mode != "wrong_root" else CID.of(1, CODEC_RAW, b"other")]
    body = b"".join(write_car(roots, blocks))
    if mode == "truncate":
        header = encode_header(roots)
        first = len(encode_varint(len(header))) + len(header) + len(car_section(*blocks[0]))
        body = body[: first + (len(body) - first) // 2]  # ends inside a section
    return body


async def _serve(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.requests.append(request.path_qs)
    try:
        root = CID.parse(request.match_info["cid"])
    except IpfsError as e:
        return web.Response(status=400, text=str(e))
    fmt = request.query.get("format") or ""
    accept = request.headers.get("Accept", "")
    try:
        if fmt == "car" or accept.startswith(CAR_MEDIA_TYPE):
            if st.tamper == "no_car":
                return web.Response(status=406, text="CAR responses are not offered here")
            ctype = "text/html" if st.tamper == "not_car" else f"{CAR_MEDIA_TYPE};version=1"
            body = _car_bytes(st, root)
            if st.tamper == "abort":  # promise the whole body, send half, drop the connection
                resp = web.StreamResponse(headers={"Content-Type": ctype})
                resp.content_length = len(body)
                await resp.prepare(request)
                await resp.write(body[: len(body) // 2])
                request.transport.close()
                return resp
            return web.Response(body=body, headers={"Content-Type": ctype})
        if fmt == "raw" or accept.startswith(RAW_MEDIA_TYPE):
            block = st.store.get_block_sync(root)
            if st.tamper == "flip" and root.codec == CODEC_RAW:
                block = bytes([block[0] ^ 1]) + block[1:]
            return web.Response(body=block, headers={"Content-Type": RAW_MEDIA_TYPE})
    except ContentNotFound:
        return web.Response(status=404, text="not found")
    return web.Response(status=406, text="this is a trustless gateway: ask for format=car or format=raw")


def make_gateway_app(store: EmbeddedStore) -> web.Application:
    app = web.Application()
    app[STATE] = GatewayState(store)
    app.router.add_get("/ipfs/{cid}", _serve)
    return app

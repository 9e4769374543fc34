"""Read-only endpoints: /v1/models, /v1/node (the quote clients sign against), /v1/receipts/{id},
/healthz, /metrics."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from node.api import keys as K
from node.api.errors import BadRequest, NotFound
from node.wire import VOUCHER_HEADER

_RID = re.compile(r"^(?:chatcmpl-|cmpl-|0x)?([0-9a-fA-F]{64})$")


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": request.app[K.CATALOG].list_models()})


async def node_info(request: web.Request) -> web.Response:
    """What a client needs to sign vouchers: node address, chain id, escrow, prices."""
    app = request.app
    chain, cfg = app[K.CHAIN], app[K.CONFIG]
    return web.json_response(
        {
            "node": chain.node_address,
            "chain_id": chain.chain_id,
            "escrow": chain.escrow,
            "receipt_log": chain.receipt_log,
            "contracts": chain.addresses,
            "base_model": cfg.base_model_id,
            "payment_mode": cfg.payment_mode,
            "voucher_header": VOUCHER_HEADER,
            "compute_price_per_1k": str(cfg.compute_price_per_1k),
            "max_tokens_limit": cfg.max_tokens_limit,
            "models": [
                {"id": m["id"], "adapter_id": m["adapter_id"], "price_per_1k": m["price_per_1k"]}
                for m in app[K.CATALOG].list_models()
            ],
        }
    )


async def receipt(request: web.Request) -> web.Response:
    raw = request.match_info["request_id"]
    match = _RID.match(raw)
    if not match:
        raise BadRequest("request id must be 32 bytes of hex (optionally prefixed 0x, chatcmpl- or cmpl-)", param="request_id")
    found = request.app[K.LEDGER].receipt_with_proof("0x" + match.group(1).lower())
    if found is None:
        raise NotFound(f"no receipt for request {raw}", code="receipt_not_found")
    body = {
        "receipt": found.receipt,
        "seq": found.seq,
        "digest": found.digest,
        "status": "committed" if found.committed else ("batched" if found.batch_seq is not None else "pending"),
    }
    if found.batch_seq is not None:
        body["batch"] = {"seq": found.batch_seq, "cid": found.batch_cid, "root": found.root}
    if found.committed:
        body["leaf_index"] = found.leaf_index
        body["proof"] = found.proof
    return web.json_response(body)


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    engine = app[K.ENGINE]
    body: dict[str, Any] = {"status": "ok", "base_model": app[K.CONFIG].base_model_id, "node": app[K.CHAIN].node_address}
    try:
        body["adapters"] = app[K.CATALOG].states()
    except Exception as e:  # noqa: BLE001  (DB down, whatever the driver raises: report it, do not crash)
        body["status"], body["db_error"] = "degraded", type(e).__name__
    running = getattr(engine, "running", None)
    if running is False:
        body["status"] = "degraded"
    if hasattr(engine, "health"):  # the vLLM gateway: each server, in rotation or not, and why
        body["engine"] = engine.health()
        if not body["engine"]["servers_in_rotation"]:
            body["status"] = "degraded"
    body["background"] = {name: h.to_json() for name, h in app[K.LOOPS].health().items()}
    return web.json_response(body, status=200 if body["status"] == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    m = app[K.METRICS]
    try:
        pending, age = app[K.LEDGER].pending_stats()
        m.pending_receipts.set(pending)
        m.settlement_lag.set(age)
    except Exception:  # noqa: BLE001  (a scrape never fails because the DB is busy)
        pass
    return web.Response(body=m.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def settle_up(request: web.Request) -> web.Response:
    """POST /v1/vouchers: a cumulative voucher without a request, paying a lane's last request."""
    sv = await request.app[K.GATE].accept_settle_up(request.headers)
    return web.json_response({"accepted": True, "voucher": {**sv.voucher.to_json(), "signature": "0x" + sv.signature.hex()}})

"""The node's HTTP API serving the real engine (embedded SmolLM2 on CPU, two tiny random LoRA
adapters) with real contracts on anvil and a real SQLite DB: chat and text completions, streaming
and not, for adapters and the base model; every answer carries usage, cost and a node-signed
receipt; vouchers are cumulative; /v1/models, /v1/node, /v1/receipts, /healthz and /metrics.

The adapter rows are written straight into the DB in state `loaded` (what the watcher and lifecycle
write after discovering them on chain); the chain-to-engine path is covered by tests/e2e.
"""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from eth_account import Account
from web3 import Web3

from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import output_hash
from inference.engine import Engine, EngineConfig
from node.daemon.root import build_app
from node.client.payer import NodeQuote, VoucherWallet
from node.config import load_config
from node.dev.devnet import fund_escrow, make_random_adapters, seed_loaded_adapters

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEPLOYER, NODE_KEY, PAYER_KEY, OWNER_KEY = DEV_PRIVATE_KEYS[0], DEV_PRIVATE_KEYS[1], DEV_PRIVATE_KEYS[2], DEV_PRIVATE_KEYS[3]
OWNER = Account.from_key(OWNER_KEY).address
PRICES = {1: 2000, 2: 5000}
MSG = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine():
    eng = Engine(EngineConfig(num_slots=2, max_batch_size=4, max_queue=64, max_model_len=512, max_new_tokens=32))
    eng.start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def chain(anvil_session, tmp_path_factory):
    w3 = Web3(Web3.HTTPProvider(anvil_session.url))
    snap = anvil_session.rpc("evm_snapshot")
    dep = deploy(anvil_session.url, DEPLOYER, out_dir=None, w3=w3)
    path = dep.save(tmp_path_factory.mktemp("dep") / "deployment.json")
    fund_escrow(w3, dep, DEPLOYER, PAYER_KEY, 10**9, Account.from_key(NODE_KEY).address)
    yield anvil_session.url, dep, path
    anvil_session.rpc("evm_revert", [snap])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(engine, chain, tmp_path_factory):
    url, dep, path = chain
    data = tmp_path_factory.mktemp("node")
    folders = make_random_adapters(engine, data / "adapters", 2)
    cfg = load_config(
        None,
        environ={},
        data_dir=data,
        deployment=path,
        rpc_url=url,
        dev_mode=True,
        dev_key_index=1,
        compute_price_per_1k=1000,
        max_tokens_limit=32,
    )
    seed_loaded_adapters(cfg.database_url, {i: (OWNER, PRICES[i]) for i in folders}, engine.model_id, folders)
    app = build_app(cfg, engine=engine, background=False)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wallet(client):
    r = await client.get("/v1/node")
    assert r.status == 200
    return VoucherWallet(PAYER_KEY, NodeQuote.from_json(await r.json()))


async def test_node_info_models_and_health(client, engine):
    info = await (await client.get("/v1/node")).json()
    assert info["node"] == Account.from_key(NODE_KEY).address and info["chain_id"] == 31337
    assert info["compute_price_per_1k"] == "1000" and info["voucher_header"] == "X-Payment-Voucher"
    models = await (await client.get("/v1/models")).json()
    ids = [m["id"] for m in models["data"]]
    assert ids == [engine.model_id, "adapter-1", "adapter-2"]
    assert [m["price_per_1k"] for m in models["data"]] == ["0", "2000", "5000"]
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.json())["adapters"] == {"loaded": 2}


async def _post(client, wallet, path, body, adapter_id):
    return await client.post(path, json=body, headers=wallet.header(adapter_id))


@pytest.mark.parametrize("model,aid", [("adapter-1", 1), ("adapter-2", 2), ("base", 0)])
async def test_chat_completion_with_receipt(client, wallet, engine, model, aid):
    model = engine.model_id if model == "base" else model
    r = await _post(
        client, wallet, "/v1/chat/completions", {"model": model, "messages": MSG, "max_tokens": 5, "temperature": 0}, aid
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["object"] == "chat.completion" and body["model"] == model
    text = body["choices"][0]["message"]["content"]
    assert text and body["choices"][0]["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert u["completion_tokens"] <= 5 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    tokens = u["total_tokens"]
    assert body["cost"]["compute"] == str(-(-tokens * 1000 // 1000))
    assert body["cost"]["adapter"] == str(-(-tokens * PRICES.get(aid, 0) // 1000))
    receipt = wallet.record(aid, body, text)  # checks cost vs quote, node signature, lane, output hash
    assert receipt.receipt.seq >= 1 and receipt.receipt.output_hash == output_hash(text)
    # the receipt is retrievable (pending until settlement commits its batch)
    rr = await client.get(f"/v1/receipts/{body['id']}")
    got = await rr.json()
    assert rr.status == 200 and got["status"] == "pending" and got["receipt"]["requestId"] == body["receipt"]["requestId"]


async def test_vouchers_are_cumulative(client, wallet):
    body = {"model": "adapter-1", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    first = await _post(client, wallet, "/v1/completions", body, 1)
    assert first.status == 200
    stale = wallet.header(1)  # signed before the first answer was recorded: now under-valued
    fb = await first.json()
    wallet.record(1, fb, fb["choices"][0]["text"])
    replay = await client.post("/v1/completions", json=body, headers=stale)
    err = (await replay.json())["error"]
    assert replay.status == 402 and err["code"] == "voucher_undervalued"
    c, a = wallet.totals(1)
    assert err["needed"] == {"computeValue": str(c), "adapterValue": str(a)}
    ok = await _post(client, wallet, "/v1/completions", body, 1)
    assert ok.status == 200
    ob = await ok.json()
    assert ob["choices"][0]["text"] == fb["choices"][0]["text"]  # greedy: same prompt, same answer
    wallet.record(1, ob, ob["choices"][0]["text"])


async def _sse_events(resp) -> list:
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = (await resp.read()).decode()
    events = [ln[len("data: ") :] for ln in raw.split("\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_streaming_ends_with_usage_cost_receipt(client, wallet, path):
    body = {"model": "adapter-2", "max_tokens": 4, "temperature": 0, "stream": True}
    body.update({"messages": MSG} if "chat" in path else {"prompt": "The sky is"})
    r = await _post(client, wallet, path, body, 2)
    assert r.status == 200
    events = await _sse_events(r)
    chat = "chat" in path
    pieces = [(e["choices"][0]["delta"].get("content") if chat else e["choices"][0]["text"]) or "" for e in events]
    final = events[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    text = "".join(pieces)
    assert text and final["usage"]["completion_tokens"] >= 1
    wallet.record(2, final, text)  # the stream's receipt covers exactly the streamed text
    # the same request, unstreamed, gives the same text (greedy)
    body["stream"] = False
    r2 = await _post(client, wallet, path, body, 2)
    b2 = await r2.json()
    text2 = b2["choices"][0]["message"]["content"] if chat else b2["choices"][0]["text"]
    assert text2 == text
    wallet.record(2, b2, text2)


async def test_metrics_expose_requests_tokens_latency_and_engine(client):
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    for needle in (
        'loranode_requests_total{endpoint="/v1/chat/completions",status="200"}',
        'loranode_tokens_total{kind="completion"}',
        "loranode_request_latency_seconds_bucket",
        "loranode_time_to_first_token_seconds_count",
        "loranode_pending_receipts",
        "loranode_settlement_lag_seconds",
        "loranode_receipts_signed_total",
        "loranode_engine_adapters_slot_loads_total",
        "loranode_engine_queue_depth",
    ):
        assert needle in text, needle
    signed = [ln for ln in text.splitlines() if ln.startswith("loranode_receipts_signed_total")]
    assert float(signed[0].split()[-1]) >= 1
    pending = [ln for ln in text.splitlines() if ln.startswith("loranode_pending_receipts ")]
    assert float(pending[0].split()[-1]) >= 1


async def test_receipt_lookup_errors(client):
    assert (await client.get("/v1/receipts/xyz")).status == 400
    r = await client.get("/v1/receipts/0x" + "ab" * 32)
    assert r.status == 404 and (await r.json())["error"]["code"] == "receipt_not_found"


async def test_settle_up_voucher_pays_the_last_request(client, wallet):
    r = await _post(client, wallet, "/v1/completions", {"model": "adapter-2", "prompt": "Hi", "max_tokens": 2}, 2)
    body = await r.json()
    wallet.record(2, body, body["choices"][0]["text"])
    c, a = wallet.totals(2)
    from chain.eip712 import SignedVoucher, Voucher, sign_voucher
    from node.wire import encode_voucher_header

    def hdr(cv, av):
        v = Voucher(wallet.payer.address, wallet.quote.node, 2, cv, av)
        sv = SignedVoucher(v, sign_voucher(v, PAYER_KEY, wallet.quote.chain_id, wallet.quote.escrow))
        return {"X-Payment-Voucher": encode_voucher_header(sv)}

    low = await client.post("/v1/vouchers", headers=hdr(c - 1, a))
    assert low.status == 402 and (await low.json())["error"]["code"] == "voucher_undervalued"
    high = await client.post("/v1/vouchers", headers=hdr(c, a + 1))
    assert high.status == 402 and (await high.json())["error"]["code"] == "voucher_overvalued"
    ok = await client.post("/v1/vouchers", headers=wallet.header(2))
    assert ok.status == 200 and (await ok.json())["voucher"]["computeValue"] == str(c)


async def test_client_dropping_a_stream_is_metered_and_the_node_goes_on(client, wallet):
    import asyncio

    import aiohttp

    body = {"model": "adapter-1", "messages": MSG, "max_tokens": 32, "temperature": 0, "stream": True}
    async with aiohttp.ClientSession() as s:
        resp = await s.post(client.make_url("/v1/chat/completions"), json=body, headers=wallet.header(1))
        assert resp.status == 200
        while True:  # read up to the first generated token, then hang up
            line = (await resp.content.readline()).decode().strip()
            if not line.startswith("data: "):
                continue
            first = json.loads(line[len("data: ") :])
            if first["choices"][0]["delta"].get("content"):
                break
        resp.close()
    rid = first["id"]
    got = None
    for _ in range(100):  # the node meters the partial generation once it notices
        r = await client.get(f"/v1/receipts/{rid}")
        if r.status == 200:
            got = await r.json()
            break
        await asyncio.sleep(0.1)
    assert got is not None, "no receipt for the dropped stream"
    receipt = wallet.record_receipt(1, got["receipt"])
    assert 0 < receipt.receipt.completion_tokens < 32
    # the lane's next request, with a voucher covering the partial one, is served
    ok = await _post(client, wallet, "/v1/completions", {"model": "adapter-1", "prompt": "Hi", "max_tokens": 2}, 1)
    assert ok.status == 200
    b = await ok.json()
    wallet.record(1, b, b["choices"][0]["text"])
    text = await (await client.get("/metrics")).text()
    assert 'status="500"' not in text

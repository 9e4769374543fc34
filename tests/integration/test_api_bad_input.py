"""Wrong, hostile and oversized input to the node's HTTP API: each gets a clear OpenAI-style JSON
error with the right status (400/401/402/404/405/413/503), never a 500, and the node keeps serving.
Real engine (embedded model, CPU, a deliberately tiny queue so overload is reachable), real
contracts on anvil, real SQLite DB; adapter rows seeded in the DB as the lifecycle would leave them."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from eth_account import Account
from web3 import Web3

from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import SignedVoucher, Voucher, sign_voucher
from inference.engine import Engine, EngineConfig
from node.daemon.root import build_app
from node.api import keys as K
from node.client.payer import NodeQuote, VoucherWallet
from node.config import load_config
from node.db import make_session_factory
from node.db.models import Adapter, AdapterState
from node.dev.devnet import fund_escrow, make_random_adapters, seed_loaded_adapters
from node.daemon.payments.gate import Lane
from node.wire import encode_voucher_header

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEPLOYER, NODE_KEY, PAYER_KEY, PAYER2_KEY, STRANGER_KEY = DEV_PRIVATE_KEYS[:5]
OWNER = Account.from_key(DEV_PRIVATE_KEYS[6]).address
MSG = [{"role": "user", "content": "Say hi."}]
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def engine():
    # one sequence decoded at a time and one waiting: the third concurrent request is overload
    eng = Engine(EngineConfig(num_slots=2, max_batch_size=1, max_queue=1, max_model_len=512, max_new_tokens=32))
    eng.start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def chain(anvil_session, tmp_path_factory):
    w3 = Web3(Web3.HTTPProvider(anvil_session.url))
    snap = anvil_session.rpc("evm_snapshot")
    dep = deploy(anvil_session.url, DEPLOYER, out_dir=None, w3=w3)
    path = dep.save(tmp_path_factory.mktemp("dep") / "deployment.json")
    for key in (PAYER_KEY, PAYER2_KEY, NODE_KEY):
        fund_escrow(w3, dep, DEPLOYER, key, 10**9, Account.from_key(NODE_KEY).address)
    yield anvil_session.url, dep, path
    anvil_session.rpc("evm_revert", [snap])


def _config(chain, data, **kw):
    url, _, path = chain
    return load_config(
        None,
        environ={},
        data_dir=data,
        deployment=path,
        rpc_url=url,
        dev_mode=True,
        dev_key_index=1,
        compute_price_per_1k=1000,
        max_tokens_limit=32,
        max_body_bytes=MAX_BODY,
        **kw,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(engine, chain, tmp_path_factory):
    data = tmp_path_factory.mktemp("node")
    folders = make_random_adapters(engine, data / "adapters", 2)
    cfg = _config(chain, data)
    seed_loaded_adapters(cfg.database_url, {1: (OWNER, 100), 2: (OWNER, 100)}, engine.model_id, folders)
    sessions = make_session_factory(cfg.database_url)
    with sessions.begin() as s:  # what the lifecycle leaves for adapters it could not serve
        s.add(
            Adapter(
                id=3,
                owner=OWNER,
                base_model="some-org/other-base-7B",
                cid="x",
                rank=4,
                price_per_1k=1,
                owner_bps=10_000,
                dataset_splits=[],
                block_number=0,
                state=AdapterState.IGNORED.value,
            )
        )
        s.add(
            Adapter(
                id=4,
                owner=OWNER,
                base_model=engine.model_id,
                cid="y",
                rank=4,
                price_per_1k=1,
                owner_bps=10_000,
                dataset_splits=[],
                block_number=0,
                state=AdapterState.FAILED.value,
                failure_reason="CID mismatch: fetched bytes hash to another CID",
            )
        )
    app = build_app(cfg, engine=engine, background=False)
    async with TestClient(TestServer(app)) as c:
        info = await (await c.get("/v1/node")).json()
        yield c, VoucherWallet(PAYER_KEY, NodeQuote.from_json(info)), VoucherWallet(PAYER2_KEY, NodeQuote.from_json(info))


async def _error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err


def _chat(**over) -> dict:
    return {"model": "adapter-1", "messages": MSG, "max_tokens": 2, "temperature": 0, **over}


RAW_BODIES = [
    (b'{"model": "adapter-1", "messages": [', "invalid_json", "malformed JSON"),
    (b"", "invalid_json", "empty request body"),
    (b"\xff\xfe\x00garbage", "invalid_json", "UTF-8"),
    (b"[1, 2, 3]", "invalid_json", "JSON object"),
    (b"null", "invalid_json", "JSON object"),
    (b"[" * 30_000 + b"]" * 30_000, "invalid_json", ""),  # parsed (C scanner) or refused: 400 either way
]


@pytest.mark.parametrize("raw,code,needle", RAW_BODIES, ids=["truncated", "empty", "not-utf8", "array", "null", "deep"])
async def test_unparseable_bodies_are_400(node, raw, code, needle):
    client, wallet, _ = node
    r = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json", **wallet.header(1)})
    err = await _error(r, 400, code)
    assert needle in err["message"]


WRONG_FIELDS = [
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 9.0}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"stream": "yes"}, "stream"),
    ({"n": 2}, "n"),
    ({"stop": [1, 2]}, "stop"),
    ({"model": 7}, "model"),
    ({"model": ""}, "model"),
    ({"seed": "x"}, "seed"),
]


@pytest.mark.parametrize("over,param", WRONG_FIELDS, ids=[p + str(i) for i, (_, p) in enumerate(WRONG_FIELDS)])
async def test_wrong_types_and_values_are_400_naming_the_field(node, over, param):
    client, wallet, _ = node
    r = await client.post("/v1/chat/completions", json=_chat(**over), headers=wallet.header(1))
    err = await _error(r, 400)
    assert err["param"] and err["param"].startswith(param), err


async def test_missing_model_and_nan(node):
    client, wallet, _ = node
    body = _chat()
    del body["model"]
    assert (await _error(await client.post("/v1/chat/completions", json=body, headers=wallet.header(1)), 400))["param"] == "model"
    raw = json.dumps(_chat()).replace('"temperature": 0', '"temperature": NaN').encode()
    await _error(await client.post("/v1/chat/completions", data=raw, headers=wallet.header(1)), 400)


async def test_limits(node):
    client, wallet, _ = node
    err = await _error(
        await client.post("/v1/chat/completions", json=_chat(max_tokens=10**9), headers=wallet.header(1)),
        400,
        "max_tokens_too_large",
    )
    assert "32" in err["message"]
    many = [{"role": "user", "content": "x"}] * 200
    await _error(
        await client.post("/v1/chat/completions", json=_chat(messages=many), headers=wallet.header(1)), 400, "too_many_messages"
    )
    long_msg = [{"role": "user", "content": "x" * 40_000}]
    await _error(
        await client.post("/v1/chat/completions", json=_chat(messages=long_msg), headers=wallet.header(1)),
        400,
        "message_too_long",
    )
    huge = b'{"model": "adapter-1", "prompt": "' + b"a" * (MAX_BODY * 4) + b'"}'
    await _error(await client.post("/v1/completions", data=huge, headers=wallet.header(1)), 413, "request_too_large")
    await _error(
        await client.post("/v1/completions", json={"model": "adapter-1", "prompt": ["a", "b"]}, headers=wallet.header(1)), 400
    )


async def test_unknown_models_are_404_with_reason(node, engine):
    client, wallet, _ = node
    for model, needle in [
        ("adapter-999", "not registered"),
        ("gpt-4", "not served here"),
        ("adapter-3", "other-base-7B"),
        ("adapter-4", "CID mismatch"),
        ("adapter-01", "adapter-<id>"),
    ]:
        err = await _error(await client.post("/v1/chat/completions", json=_chat(model=model), headers=wallet.header(1)), 404)
        assert needle in err["message"] and err["param"] == "model", (model, err)


async def test_unknown_route_and_wrong_method_are_json(node):
    client, _, _ = node
    await _error(await client.get("/v1/nope"), 404)
    await _error(await client.get("/v1/chat/completions"), 405)


async def test_payment_errors_are_402(node):
    client, wallet, _ = node
    err = await _error(await client.post("/v1/chat/completions", json=_chat()), 402, "payment_missing")
    assert int(err["max_cost"]) > 0
    forged = VoucherWallet(STRANGER_KEY, wallet.quote)
    # claim to be the payer while signing with a stranger's key
    v = Voucher(wallet.payer.address, wallet.quote.node, 1, 0, 0)
    sv = SignedVoucher(v, sign_voucher(v, STRANGER_KEY, wallet.quote.chain_id, wallet.quote.escrow))
    hdr = {"X-Payment-Voucher": encode_voucher_header(sv)}
    await _error(await client.post("/v1/chat/completions", json=_chat(), headers=hdr), 402, "voucher_signer_unauthorized")
    await _error(
        await client.post("/v1/chat/completions", json=_chat(), headers={"X-Payment-Voucher": "%%%"}), 402, "voucher_malformed"
    )
    # a voucher for adapter 2 does not pay for adapter 1
    await _error(await client.post("/v1/chat/completions", json=_chat(), headers=wallet.header(2)), 402, "voucher_wrong_adapter")
    # the stranger has no escrow at all
    await _error(await client.post("/v1/chat/completions", json=_chat(), headers=forged.header(1)), 402, "escrow_insufficient")
    # each refusal is counted by reason for the operator
    text = await (await client.get("/metrics")).text()
    reasons = ("payment_missing", "voucher_signer_unauthorized", "voucher_malformed")
    reasons += ("voucher_wrong_adapter", "escrow_insufficient")
    for reason in reasons:
        assert f'loranode_payment_rejections_total{{reason="{reason}"}} 1.0' in text, reason


async def test_overload_is_503_with_retry_after_and_node_recovers(node, engine):
    client, w1, w2 = node
    lanes = [(w, m) for w in (w1, w2) for m in ("adapter-1", "adapter-2", engine.model_id)]

    async def one(w, model):
        aid = w.adapter_id(model)
        r = await client.post("/v1/chat/completions", json=_chat(model=model, max_tokens=16), headers=w.header(aid))
        body = await r.json()
        if r.status == 200:
            w.record(aid, body, body["choices"][0]["message"]["content"])
        return r.status, r.headers.get("Retry-After"), body

    results = await asyncio.gather(*(one(w, m) for w, m in lanes))
    statuses = sorted(s for s, _, _ in results)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    for status, retry, body in results:
        if status == 503:
            assert retry == "1" and body["error"]["code"] == "overloaded"
    # after the burst: a 503'd request was not charged, the node serves again
    r = await client.post("/v1/chat/completions", json=_chat(), headers=w1.header(1))
    assert r.status == 200


async def test_no_500_was_ever_returned(node):
    client, _, _ = node
    text = await (await client.get("/metrics")).text()
    assert 'status="500"' not in text


async def test_operator_funded_mode_with_api_keys(engine, chain, tmp_path_factory):
    data = tmp_path_factory.mktemp("opnode")
    cfg = _config(chain, data, payment_mode="operator-funded", api_keys=["sk-test-1"])
    seed_loaded_adapters(cfg.database_url, {1: (OWNER, 100)}, engine.model_id)
    app = build_app(cfg, engine=engine, background=False)
    async with TestClient(TestServer(app)) as client:
        await _error(await client.post("/v1/chat/completions", json=_chat()), 401, "invalid_api_key")
        await _error(
            await client.post("/v1/chat/completions", json=_chat(), headers={"Authorization": "Bearer nope"}),
            401,
            "invalid_api_key",
        )
        r = await client.post("/v1/chat/completions", json=_chat(), headers={"Authorization": "Bearer sk-test-1"})
        assert r.status == 200, await r.text()
        body = await r.json()
        operator = Account.from_key(NODE_KEY).address
        assert body["receipt"]["payer"] == operator == body["receipt"]["node"]
        # the operator signed the lane's cumulative voucher as payer; settlement will redeem it
        sv = app[K.LEDGER].get(Lane(operator, operator, 1)).voucher
        assert sv is not None and sv.voucher.compute_value == int(body["cost"]["compute"])
        assert sv.signer(wallet_chain_id(chain), chain[1].addresses["UsageEscrow"]) == operator


def wallet_chain_id(chain) -> int:
    return chain[1].chain_id

"""Per-inference attribution in the running node, with real parts: a private anvil with the real
contracts, the embedded IPFS store, the embedded model in the real engine, the node's aiohttp app
with its background loops (watcher → lifecycle → AttributionService → receipts → settlement).

Planted spans: the adapter's greedy answer to a prompt is generated first, then published inside a
contribution (with filler), beside an unrelated one. The receipt for that prompt then gives the
planted contribution >= 90% of the weight and its attributionHash commits to those weights; an
answer with no overlap gets none. Contributions with bad content (empty, not UTF-8) are skipped
with a reason. A contribution whose acceptance is undone (here by a reorg; a curator's later rejection
emits the same ContributionRejected path) is dropped from the index
and its weight moves away. The receipts file committed on chain holds the attribution, and the
receipt verifies on chain. After the node stops, a new service reloads the same indexes from disk
(same weights), rebuilds a tampered index file, and refuses a contribution over the byte cap.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from eth_account import Account
from web3 import Web3

from chain.contracts import Contracts
from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import NO_ATTRIBUTION_HASH, SignedReceipt, attribution_hash
from inference.engine import Engine, EngineConfig
from inference.requests import GenerationRequest, SamplingParams

KEYS = dict(
    zip(["deployer", "node", "payer", "owner", "curator", "alice", "bob"], DEV_PRIVATE_KEYS, strict=False)
)  # the first seven of anvil's ten dev keys
ACCT = {k: Account.from_key(v) for k, v in KEYS.items()}
PLANTED_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
OTHER_PROMPT = [{"role": "user", "content": "List three prime numbers."}]
FILLER_A = (
    "Field notes, volume two.\nThe harbour was quiet that morning and the gulls were loud.\n"
    "Two fishing boats came in before seven, their decks stacked with crates of cod and ice.\n"
)
FILLER_B = "\nEnd of the entry. Tomorrow we sail north along the coast.\n"
UNRELATED = (
    "To bake rye bread, mix flour, water, salt and a sourdough starter, let it rise overnight, "
    "shape it into a loaf and bake it in a hot oven for fifty minutes.\n"
)
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def engine():
    eng = Engine(EngineConfig(num_slots=2, max_batch_size=4, max_queue=64, max_model_len=512, max_new_tokens=32))
    eng.start()
    yield eng
    eng.close()


async def _until(pred, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def _greedy(engine, model: str, messages) -> tuple[str, list[int]]:
    gen = GenerationRequest(
        f"probe-{time.monotonic_ns()}", model, messages=messages, params=SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    )
    res = await engine.submit(gen).result()
    return res.text, list(res.token_ids)


async def _publish_text(c: Contracts, store, tmp, who: str, ds: int, data: bytes) -> tuple[int, str]:
    from node.ipfs import cid_of_bytes

    path = tmp / f"contribution-{time.monotonic_ns()}.txt"
    path.write_bytes(data)
    cid = await store.add_path(path)
    assert cid == cid_of_bytes(data)
    await asyncio.to_thread(c.datasets.contribute, ACCT[who], ds, cid, max(1, len(data) // 4))
    return c.datasets.contribution_count(), cid


async def test_receipts_attribute_answers_to_contributions(fresh_anvil, engine, tmp_path):
    from transformers import AutoConfig

    from inference.adapter_factory import make_random_adapter
    from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder
    from node.daemon.root import build_app
    from node.api.keys import ATTRIBUTION
    from node.cli.attribution import parse_receipt
    from node.client.payer import NodeQuote, VoucherWallet
    from node.config import load_config
    from node.dev.devnet import fund_escrow
    from node.ipfs import ContentCache, EmbeddedStore, fetch_verified

    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    dep = deploy(fresh_anvil.url, KEYS["deployer"], out_dir=None, w3=w3)
    dep_path = dep.save(tmp_path / "deployment.json")
    c = Contracts(w3, dep)
    fund_escrow(w3, dep, KEYS["deployer"], KEYS["payer"], 10**12, Account.from_key(KEYS["node"]).address)
    data = tmp_path / "node"
    cfg = load_config(
        None,
        environ={},
        data_dir=data,
        deployment=dep_path,
        rpc_url=fresh_anvil.url,
        dev_mode=True,
        dev_key_index=1,
        confirmations=0,
        watcher_poll_s=0.2,
        compute_price_per_1k=1000,
        max_tokens_limit=32,
        settlement_interval_s=0.5,
        redeem_interval_s=0.5,
    )
    cfg.ensure_dirs()
    store = EmbeddedStore(cfg.ipfs_store_dir)
    c.datasets.create_dataset(ACCT["curator"], "harbour-notes", "CC-BY-4.0", "")
    ds = c.datasets.dataset_count()
    folder = make_random_adapter(
        tmp_path / "a1", AutoConfig.from_pretrained(resolve_model_folder(None)), rank=4, seed=1, base_model_id=EMBEDDED_MODEL_ID
    )
    c.adapters.register(ACCT["owner"], EMBEDDED_MODEL_ID, await store.add_path(folder), 4, 2000, 6000, [ds], [4000])

    app = build_app(cfg, engine=engine)
    async with TestClient(TestServer(app)) as client:
        svc = app[ATTRIBUTION]
        await _until(lambda: "adapter-1" in engine.adapters(), 60, "adapter-1 loaded by the lifecycle")
        loops = (await (await client.get("/healthz")).json())["background"]  # every loop is supervised
        assert {name: loop["state"] for name, loop in loops.items()} == {
            "escrow_follower": "running",
            "watcher": "running",
            "lifecycle": "running",
            "settlement": "running",
            "attribution": "running",
        }
        answer, answer_ids = await _greedy(engine, "adapter-1", PLANTED_PROMPT)
        assert len(answer_ids) >= 8, answer  # long enough to hold a k=8 span
        assert svc.attributor_for(1) is None or svc.attributor_for(1).contribution_ids() == []

        # contributions: planted (filler + the answer + filler), unrelated, empty, not UTF-8; all accepted
        planted, _ = await _publish_text(c, store, tmp_path, "alice", ds, (FILLER_A + answer + FILLER_B).encode())
        unrelated, _ = await _publish_text(c, store, tmp_path, "bob", ds, UNRELATED.encode())
        empty, _ = await _publish_text(c, store, tmp_path, "bob", ds, b"  \n")
        not_utf8, _ = await _publish_text(c, store, tmp_path, "bob", ds, b"caf\xe9 \xff\xfe")
        dropped, _ = await _publish_text(c, store, tmp_path, "bob", ds, (answer + FILLER_B).encode())
        for cid_id in (planted, unrelated, empty, not_utf8):
            await asyncio.to_thread(c.datasets.accept, ACCT["curator"], cid_id, 1)
        snap = fresh_anvil.rpc("evm_snapshot")
        await asyncio.to_thread(c.datasets.accept, ACCT["curator"], dropped, 1)

        def members():
            att = svc.attributor_for(1)
            return att.contribution_ids() if att is not None else None

        await _until(lambda: members() == sorted([planted, unrelated, dropped]), 60, "index over 3 contributions")
        assert "not UTF-8" in svc.stats.skipped[not_utf8] and "no text" in svc.stats.skipped[empty]
        both = svc.attributor_for(1).attribute(answer_ids)
        assert set(both.weights_bps) == {planted, dropped} and sum(both.weights_bps.values()) == 10_000

        # a reorg undoes the acceptance of `dropped`: it leaves the index, its weight moves away
        fresh_anvil.rpc("evm_revert", [snap])
        fresh_anvil.rpc("anvil_mine", [2])
        await _until(lambda: members() == sorted([planted, unrelated]), 60, "the undone contribution dropped")

        # the planted prompt through the API: >= 90% to the planted contribution, hash-committed
        quote = NodeQuote.from_json(await (await client.get("/v1/node")).json())
        wallet = VoucherWallet(KEYS["payer"], quote)

        async def ask(messages):
            r = await client.post(
                "/v1/chat/completions",
                headers=wallet.header(1),
                json={"model": "adapter-1", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0},
            )
            assert r.status == 200, await r.text()
            body = await r.json()
            wallet.record(1, body, body["choices"][0]["message"]["content"])  # signature, cost, output hash
            return body

        body = await ask(PLANTED_PROMPT)
        assert body["choices"][0]["message"]["content"] == answer
        rec = body["receipt"]
        weights = {int(k): v for k, v in rec["attribution"].items()}
        assert weights.get(planted, 0) >= 9_000 and dropped not in weights and sum(weights.values()) == 10_000
        ids = sorted(weights)
        assert rec["attributionHash"] == "0x" + attribution_hash(ids, [weights[i] for i in ids]).hex()
        assert rec["datasetAttribution"] == {str(ds): 10_000}
        assert rec["spans"] and all(s["contributionId"] in weights for s in rec["spans"])
        assert any(s["contributionId"] == planted and s["text"] and s["text"] in answer for s in rec["spans"])
        # each span states where its tokens are in the contribution, as an auditor re-tokenizes it
        from inference.attribution.text import tokenize

        source = tokenize(engine.tokenizer, FILLER_A + answer + FILLER_B).tolist()
        for s in (s for s in rec["spans"] if s["contributionId"] == planted):
            at, n = s["contributionStart"], s["end"] - s["start"]
            assert source[at : at + n] == answer_ids[s["start"] : s["end"]], s
        # the same answer, the same weights (deterministic)
        assert svc.attributor_for(1).attribute(answer_ids).weights_bps == weights

        # streamed: the final event's receipt carries the same attribution
        r = await client.post(
            "/v1/chat/completions",
            headers=wallet.header(1),
            json={"model": "adapter-1", "messages": PLANTED_PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True},
        )
        events = [
            json.loads(ln[6:]) for ln in (await r.read()).decode().split("\n") if ln.startswith("data: ") and ln != "data: [DONE]"
        ]
        final = events[-1]
        wallet.record(1, final, answer)
        assert final["receipt"]["attribution"] == rec["attribution"]
        assert final["receipt"]["attributionHash"] == rec["attributionHash"]

        other = await ask(OTHER_PROMPT)
        other_text = other["choices"][0]["message"]["content"]
        assert other_text and other["receipt"]["attribution"] == {} and other["receipt"]["spans"] == []
        assert other["receipt"]["attributionHash"] == "0x" + NO_ATTRIBUTION_HASH.hex()

        # /v1/receipts shows the spans; `loranode attribution explain` checks them against the hash
        got = await (await client.get(f"/v1/receipts/{body['id']}")).json()
        assert got["receipt"]["spans"] == rec["spans"] and got["receipt"]["attribution"] == rec["attribution"]
        assert parse_receipt(json.dumps(got).encode()).hash_ok is True

        text = await (await client.get("/metrics")).text()
        gauges = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("loranode_attribution_")}
        assert gauges["loranode_attribution_adapters_ready"] == 1 and gauges["loranode_attribution_contributions_skipped"] == 2
        assert gauges["loranode_attribution_index_bytes"] == 8 * gauges["loranode_attribution_corpus_token_count"] > 0

        # settlement commits the receipts file; it holds the attribution, and the receipt verifies on chain
        async def committed():
            return await (await client.get(f"/v1/receipts/{body['id']}")).json()

        deadline = time.monotonic() + 60
        while (got := await committed())["status"] != "committed":
            assert time.monotonic() < deadline, f"receipt not committed: {got['status']}"
            await asyncio.sleep(0.3)

    path = await fetch_verified([store], got["batch"]["cid"], 1 << 24, ContentCache(tmp_path / "fc", 1 << 26))
    batch = json.loads(path.read_text())
    entry = next(r for r in batch["receipts"] if r["requestId"] == rec["requestId"])
    assert entry["attribution"] == rec["attribution"] and entry["spans"] == rec["spans"]
    assert parse_receipt(json.dumps(entry).encode()).hash_ok is True
    signed = SignedReceipt.from_json({k: v for k, v in rec.items() if k not in ("attribution", "datasetAttribution", "spans")})
    assert c.receipts.verify_receipt(signed.receipt, got["batch"]["seq"], [bytes.fromhex(p[2:]) for p in got["proof"]])

    # ---- after the node stopped: a restart reloads the on-disk indexes and gives the same weights
    await _restart_checks(cfg, store, engine.tokenizer, tmp_path, answer_ids, weights, planted, unrelated)


async def _restart_checks(cfg, store, tokenizer, tmp_path, answer_ids, weights, planted, unrelated):
    from node.daemon.attribution import AttributionService
    from node.db import make_session_factory
    from node.ipfs import ContentCache

    sessions = make_session_factory(cfg.database_url)

    async def service(max_bytes: int = 1 << 20) -> AttributionService:
        svc = AttributionService(
            sessions,
            [store],
            ContentCache(tmp_path / f"c{time.monotonic_ns()}", 1 << 26),
            tokenizer,
            cfg.data_dir,
            k=8,
            max_contribution_bytes=max_bytes,
        )
        await svc.refresh()
        await svc.drain()
        return svc

    try:
        again = await service()
        assert again.store.stats.loaded == 2 and again.store.stats.built == 0  # from the cache, not rebuilt
        assert again.attributor_for(1).attribute(answer_ids).weights_bps == weights

        # a tampered index file does not verify: it is rebuilt, and the weights do not change
        index_file = again.store.path_for(next(m for m in again.desired()[1] if m[0] == planted)[2])
        raw = bytearray(index_file.read_bytes())
        raw[-5] ^= 0xFF
        index_file.write_bytes(bytes(raw))
        rebuilt = await service()
        assert rebuilt.store.stats.rebuilt == 1 and rebuilt.store.stats.loaded == 1
        assert rebuilt.attributor_for(1).attribute(answer_ids).weights_bps == weights

        # over the byte cap: refused at fetch (never indexed), with the reason; the rest still serves
        cap = len(UNRELATED.encode())
        assert len((FILLER_A + FILLER_B).encode()) > cap  # the planted one is over it, the other is not
        small = await service(max_bytes=cap)
        assert "ContentTooLarge" in small.stats.skipped[planted]
        assert small.attributor_for(1).contribution_ids() == [unrelated]
        assert small.attributor_for(1).attribute(answer_ids).weights_bps == {}
    finally:
        sessions.kw["bind"].dispose()


async def test_service_shares_withdraws_and_retries(engine, tmp_path):
    """The service alone on a real SQLite DB (rows as the watcher and lifecycle write them; the
    chain-to-DB path is covered above) and the embedded IPFS store: adapters on the same datasets
    share one index; a folder CID is refused; a contribution no backend has is retried later; a
    contribution that leaves the accepted set withdraws the attributor at once, until rebuilt."""
    from node.daemon.attribution import AttributionService
    from node.db import make_session_factory, migrate
    from node.db.models import Adapter, Contribution
    from node.ipfs import ContentCache, EmbeddedStore, cid_of_bytes

    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    sessions = make_session_factory(url)
    store = EmbeddedStore(tmp_path / "ipfs")
    texts = {1: FILLER_A.encode(), 2: UNRELATED.encode(), 4: (FILLER_B * 3).encode()}
    cids = {}
    for i, data in texts.items():
        (tmp_path / f"t{i}.txt").write_bytes(data)
        cids[i] = cid_of_bytes(data)
        if i != 4:  # contribution 4 is not in any backend yet
            assert await store.add_path(tmp_path / f"t{i}.txt") == cids[i]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("inside a folder")
    cids[3] = await store.add_path(tmp_path / "folder")
    with sessions.begin() as s:
        for aid, ds in ((1, 7), (2, 7), (3, 8)):
            s.add(
                Adapter(
                    id=aid,
                    owner="0x" + "11" * 20,
                    base_model="m",
                    cid=cids[1],
                    dataset_splits=[[ds, 4000]],
                    owner_bps=6000,
                    block_number=1,
                    state="loaded",
                )
            )
        for cid_id, ds in ((1, 7), (2, 7), (3, 8), (4, 7)):
            s.add(
                Contribution(
                    id=cid_id,
                    dataset_id=ds,
                    contributor="0x" + "22" * 20,
                    content_cid=cids[cid_id],
                    status="accepted",
                    weight=1,
                    block_number=1,
                )
            )
    svc = AttributionService(
        sessions, [store], ContentCache(tmp_path / "cache", 1 << 26), engine.tokenizer, tmp_path / "data", k=8, retry_s=3600
    )
    try:
        await svc.refresh()
        await svc.drain()
        await svc.refresh()  # adapter 2 waited for adapter 1's build of the same corpus
        a1, a2 = svc.attributor_for(1), svc.attributor_for(2)
        assert a1 is a2 and a1.contribution_ids() == [1, 2] and svc.stats.builds == 2
        assert svc.attributor_for(3) is None and "folder" in svc.stats.skipped[3]
        assert "NotFound" in svc.stats.skipped[4] or "fetch failed" in svc.stats.skipped[4]
        filler_ids = engine.tokenizer(FILLER_A, add_special_tokens=False).input_ids
        assert a1.attribute(filler_ids).weights_bps == {1: 10_000}

        # the missing content appears; after retry_s the incomplete index is rebuilt with it
        assert await store.add_path(tmp_path / "t4.txt") == cids[4]
        svc.retry_s = 0
        await svc.refresh()
        await svc.drain()
        assert svc.attributor_for(1).contribution_ids() == [1, 2, 4] and 4 not in svc.stats.skipped

        # contribution 1 leaves the accepted set: no attribution at all until the rebuild is ready
        with sessions.begin() as s:
            s.get(Contribution, 1).status = "rejected"
        await svc.refresh()
        assert svc.attributor_for(1) is None and svc.attributor_for(2) is None
        await svc.drain()
        assert svc.attributor_for(1).contribution_ids() == [2, 4]
        assert svc.attributor_for(1).attribute(filler_ids).weights_bps == {}
        await svc.refresh()
        assert svc.attributor_for(2) is svc.attributor_for(1)
    finally:
        await svc.close()
        sessions.kw["bind"].dispose()

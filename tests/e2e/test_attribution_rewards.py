"""Attribution moves money, end to end with real parts: a private anvil with the real contracts, the
embedded IPFS store, the embedded model in the real engine, the node's app (watcher → lifecycle →
AttributionService → receipts) and the node's settlement (commit → redeem → AttributionPool.settle).

Three contributions of one dataset: alice's holds the adapter's answer to one prompt, bob's the
answer to another, carol's nothing any answer says. The payer asks alice's prompt four times, bob's
once and an unrelated prompt once (no attribution). After settlement each contribution's credited
reward equals, to the wei, what this test computes on its own from the committed receipts file (fetched
by the CID ReceiptLog holds) and the vouchers redeemed: alice earns several times bob, carol earns
only her accepted-weight share of the unattributed part, which splits by accepted weight.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from web3 import Web3

import test_attribution_node as tan  # helpers: _greedy, _publish_text, _until, FILLER_*, KEYS, ACCT
from chain.contract_types import BatchCommitted, VoucherRedeemed
from chain.contracts import Contracts
from chain.deploy import deploy
from inference.engine import Engine, EngineConfig

pytestmark = pytest.mark.slow

BPS = 10_000
FEE_BPS = 500
DATASET_BPS = 4000
ACC = 10**24
PROMPT_A = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT_B = [{"role": "user", "content": "Name a large animal that lives in the sea."}]
PROMPT_NONE = [{"role": "user", "content": "List three prime numbers."}]
WEIGHTS = {"alice": 1, "bob": 1, "carol": 2}  # accepted weights


@pytest.fixture(scope="module")
def engine():
    eng = Engine(EngineConfig(num_slots=2, max_batch_size=4, max_queue=64, max_model_len=512, max_new_tokens=32))
    eng.start()
    yield eng
    eng.close()


def independent_expectation(batch: dict, drained: int, ds: int, contributions: dict[int, int]) -> dict[int, int]:
    """Credited reward per contribution, recomputed here from the receipts file alone, by the rule of
    docs/attribution-rewards.md (written out again rather than imported from the node)."""
    w: dict[int, int] = {}
    unattributed = 0
    for r in batch["receipts"]:
        base = int(r["adapterCost"]) * DATASET_BPS
        named = {int(k): v for k, v in r["attribution"].items() if int(k) in contributions}
        total = sum(named.values())
        for cid, b in named.items():
            w[cid] = w.get(cid, 0) + base * b // total
        unattributed += base - sum(base * b // total for b in named.values()) if total else base
    total_w = sum(w.values()) + unattributed
    attributed = {cid: drained * wc // total_w for cid, wc in w.items()}
    rest = drained - sum(attributed.values())
    acc = rest * ACC // sum(contributions.values())
    return {cid: attributed.get(cid, 0) + weight * acc // ACC for cid, weight in contributions.items()}


async def test_rewards_follow_what_answers_drew_on(fresh_anvil, engine, tmp_path):
    from transformers import AutoConfig

    from inference.adapter_factory import make_random_adapter
    from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder
    from node.daemon.root import build_app
    from node.client.payer import NodeQuote, VoucherWallet
    from node.config import load_config
    from node.dev.devnet import fund_escrow, stake_node
    from node.ipfs import ContentCache, EmbeddedStore, fetch_verified
    from node.daemon.settlement.settler import settlement_from_config

    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    dep = deploy(fresh_anvil.url, tan.KEYS["deployer"], out_dir=None, w3=w3, protocol_fee_bps=FEE_BPS)
    dep_path = dep.save(tmp_path / "deployment.json")
    c = Contracts(w3, dep)
    fund_escrow(w3, dep, tan.KEYS["deployer"], tan.KEYS["payer"], 10**20, tan.ACCT["node"].address)
    stake_node(w3, dep, tan.KEYS["deployer"], tan.KEYS["node"])  # only a staked node redeems
    cfg = load_config(
        None,
        environ={},
        data_dir=tmp_path / "node",
        deployment=dep_path,
        rpc_url=fresh_anvil.url,
        dev_mode=True,
        dev_key_index=1,
        confirmations=0,
        watcher_poll_s=0.2,
        compute_price_per_1k=1000,
        max_tokens_limit=32,
        settlement_enabled=False,
    )
    cfg.ensure_dirs()
    store = EmbeddedStore(cfg.ipfs_store_dir)
    c.datasets.create_dataset(tan.ACCT["curator"], "harbour-notes", "CC-BY-4.0", "")
    ds = c.datasets.dataset_count()
    folder = make_random_adapter(
        tmp_path / "a1", AutoConfig.from_pretrained(resolve_model_folder(None)), rank=4, seed=1, base_model_id=EMBEDDED_MODEL_ID
    )
    c.adapters.register(
        tan.ACCT["owner"], EMBEDDED_MODEL_ID, await store.add_path(folder), 4, 10**15, BPS - DATASET_BPS, [ds], [DATASET_BPS]
    )

    app = build_app(cfg, engine=engine)
    async with TestClient(TestServer(app)) as client:
        from node.api.keys import ATTRIBUTION

        svc = app[ATTRIBUTION]
        await tan._until(lambda: "adapter-1" in engine.adapters(), 60, "adapter-1 loaded")
        answer_a, _ = await tan._greedy(engine, "adapter-1", PROMPT_A)
        answer_b, _ = await tan._greedy(engine, "adapter-1", PROMPT_B)
        ids = {}
        for who, text in (
            ("alice", tan.FILLER_A + answer_a + tan.FILLER_B),
            ("bob", tan.FILLER_B + answer_b),
            ("carol", tan.UNRELATED),
        ):
            ids[who], _ = await tan._publish_text(c, store, tmp_path, who if who != "carol" else "bob", ds, text.encode())
            await asyncio.to_thread(c.datasets.accept, tan.ACCT["curator"], ids[who], WEIGHTS[who])
        await tan._until(
            lambda: svc.attributor_for(1) is not None and svc.attributor_for(1).contribution_ids() == sorted(ids.values()),
            60,
            "index ready",
        )

        quote = NodeQuote.from_json(await (await client.get("/v1/node")).json())
        wallet = VoucherWallet(tan.KEYS["payer"], quote)
        answers = []
        for prompt in [PROMPT_A] * 4 + [PROMPT_B, PROMPT_NONE]:
            r = await client.post(
                "/v1/chat/completions",
                headers=wallet.header(1),
                json={"model": "adapter-1", "messages": prompt, "max_tokens": tan.MAX_TOKENS, "temperature": 0},
            )
            assert r.status == 200, await r.text()
            body = await r.json()
            wallet.record(1, body, body["choices"][0]["message"]["content"])
            answers.append(body["choices"][0]["message"]["content"])
        r = await client.post("/v1/vouchers", headers=wallet.header(1))  # pay the last request too
        assert r.status == 200, await r.text()

    # the node's settlement: commit the batch, redeem the voucher, settle the batch in AttributionPool
    settlement = settlement_from_config(cfg, _sessions(cfg), w3, tan.ACCT["node"], c, store)
    await settlement.flush(timeout=120)
    node = tan.ACCT["node"].address
    assert c.receipts.last_seq(node) == 1 and c.pool.settled_seq(node) == 1

    # everything below comes from public data: chain events and the receipts file on IPFS
    logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"})
    events = c.decode_events(logs)
    (committed,) = [e for e in events if isinstance(e, BatchCommitted)]
    path = await fetch_verified([store], committed.receipts_cid, 1 << 24, ContentCache(tmp_path / "fc", 1 << 26))
    batch = json.loads(path.read_text())
    assert len(batch["receipts"]) == 6
    drained = 0
    for e in events:
        if isinstance(e, VoucherRedeemed):
            rest = e.adapter_paid - e.adapter_paid * FEE_BPS // BPS
            drained += rest * DATASET_BPS // BPS
    assert drained > 0 and c.pool.pool_of(node, ds).balance == 0

    contributions = {ids[w]: WEIGHTS[w] for w in ids}
    expected = independent_expectation(batch, drained, ds, contributions)
    credited = {cid: c.datasets.pending_reward(cid) for cid in contributions}
    assert credited == expected, (credited, expected)
    alice, bob, carol = (credited[ids[w]] for w in ("alice", "bob", "carol"))
    assert alice > 2 * bob > 0 and carol > 0
    # what attribution credited (nothing harvested yet; the contracts log no event per credit)
    attributed = {cid: a for cid in contributions if (a := c.datasets.pending_attributed(cid))}
    assert ids["carol"] not in attributed and attributed[ids["alice"]] > 3 * attributed[ids["bob"]]
    # conservation: what was drained is credited, except the accumulator's flooring dust (< 1 wei per weight)
    assert 0 <= drained - sum(credited.values()) < sum(WEIGHTS.values())

    # the public audit of the batch passes, and finds the same attributed amounts
    from node.attribution_rewards.audit import audit_batch, verify_with_output

    cache = ContentCache(tmp_path / "audit-cache", 1 << 26)
    report = await audit_batch(c, [store], cache, 1, node, tokenizer=engine.tokenizer)
    assert report.ok, report.discrepancies
    # every span states where it occurs in its contribution, and the audit checked each there
    assert batch["version"] == 2 and all(isinstance(s["contributionStart"], int) for r in batch["receipts"] for s in r["spans"])
    assert not any("position" in n for n in report.notes), report.notes
    assert report.settled and report.expected_amounts == attributed
    # the same through the CLI (exit 0, JSON report)
    from typer.testing import CliRunner

    from node.cli.app import app as cli_app

    res = await asyncio.to_thread(
        CliRunner().invoke,
        cli_app,
        [
            "attribution",
            "audit",
            "--batch",
            "1",
            "--node",
            node,
            "--rpc-url",
            fresh_anvil.url,
            "--deployment",
            str(dep_path),
            "--ipfs-store",
            str(cfg.ipfs_store_dir),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ok"] is True
    # `rewards show` breaks alice's rewards down per contribution
    res = await asyncio.to_thread(
        CliRunner().invoke,
        cli_app,
        [
            "rewards",
            "show",
            tan.ACCT["alice"].address,
            "--rpc-url",
            fresh_anvil.url,
            "--deployment",
            str(dep_path),
            "--ipfs-store",
            str(cfg.ipfs_store_dir),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["contributions"]
    assert row["contribution_id"] == ids["alice"] and row["answers"] == 4 and row["tokens_attributed"] > 0
    assert int(row["earned_by_attribution"]) == attributed[ids["alice"]]
    assert int(row["earned"]) == int(row["pending"]) == credited[ids["alice"]] and int(row["harvested"]) == 0
    # a payer holding an answer verifies its receipt completely (proof from the committed file)
    from chain.merkle import StandardMerkleTree

    tree = StandardMerkleTree.of([[bytes.fromhex(r["digest"][2:])] for r in batch["receipts"]], ["bytes32"])
    first = batch["receipts"][0]
    body = {"receipt": first, "batch": {"seq": 1, "cid": committed.receipts_cid}, "proof": tree.proof_hex(0)}
    got = await verify_with_output(c, [store], cache, body, answers[0], engine.tokenizer)
    assert got.ok and got.settled, got.discrepancies
    assert not any("position" in n for n in got.notes), got.notes
    assert any(s["contributionId"] == ids["alice"] for s in first["spans"])
    wrong = await verify_with_output(c, [store], cache, body, answers[0] + " (edited)", engine.tokenizer)
    assert [d.rule for d in wrong.discrepancies] == ["output"]


def _sessions(cfg):
    from node.db import make_session_factory

    return make_session_factory(cfg.database_url)

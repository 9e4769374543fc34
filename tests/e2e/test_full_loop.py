"""The whole loop on a real anvil chain with the real contracts, the embedded IPFS store and the
embedded model, with nothing stubbed:

publish a dataset (two accepted contributions) and two adapters on chain (their folders added to
the node's embedded IPFS store) → `loranode`'s daemon (`node.daemon.root.serve`) discovers them,
fetches and CID-verifies them, loads them → the official `openai` client (through
`node.client.payer.LoraNodeClient`, which signs cumulative vouchers) gets answers, streaming and not, for
both adapters and the base model → the settlement loop commits the receipts and redeems the
vouchers and settles each batch's dataset parts in AttributionPool → every receipt verifies on chain
with `verifyReceipt`, and the RewardVault credits of
the node, the protocol, the adapter owners and the dataset contributors match, to the wei, the
splits registered on chain applied to the costs the node signed.
"""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import replace

import pytest
from eth_account import Account
from web3 import Web3

from chain.contracts import Contracts
from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from inference.base_model import EMBEDDED_MODEL_ID
from node.dev.stack import NodeThread, get_json as _get, wait_for as _wait

pytestmark = pytest.mark.slow

# the first nine of anvil's ten dev keys
KEYS = dict(
    zip(["deployer", "node", "payer", "owner1", "owner2", "curator", "alice", "bob", "carol"], DEV_PRIVATE_KEYS, strict=False)
)
ACCT = {k: Account.from_key(v) for k, v in KEYS.items()}
ADDR = {k: a.address for k, a in ACCT.items()}
BPS = 10_000
ACC_PRECISION = 10**24
COMPUTE_PRICE = 1000
ADAPTERS = {  # adapter id: (owner, price per 1K tokens, owner bps, dataset bps)
    1: ("owner1", 7000, 6000, 4000),
    2: ("owner2", 3001, 7500, 2500),
}


def _publish(c: Contracts, store_dir, work):
    """Dataset with two accepted contributions, two adapters on it, one adapter for another base."""
    from transformers import AutoConfig

    from inference.adapter_factory import make_random_adapter
    from inference.base_model import resolve_model_folder
    from node.ipfs import EmbeddedStore, cid_of_bytes

    c.datasets.create_dataset(ACCT["curator"], "tiny-wiki", "CC-BY-4.0", "")
    ds = c.datasets.dataset_count()
    contributions = {}
    for who, text, weight in (("alice", b"Paris is the capital of France.", 3), ("bob", b"The sky is blue.", 1)):
        c.datasets.contribute(ACCT[who], ds, cid_of_bytes(text), len(text))
        cid_id = c.datasets.contribution_count()
        c.datasets.accept(ACCT["curator"], cid_id, weight)
        contributions[who] = (cid_id, weight)
    base_cfg = AutoConfig.from_pretrained(resolve_model_folder(None))
    store = EmbeddedStore(store_dir)
    for aid, (owner, price, owner_bps, ds_bps) in ADAPTERS.items():
        folder = make_random_adapter(work / f"a{aid}", base_cfg, rank=4, seed=aid, base_model_id=EMBEDDED_MODEL_ID)
        cid = asyncio.run(store.add_path(folder))
        c.adapters.register(ACCT[owner], EMBEDDED_MODEL_ID, cid, 4, price, owner_bps, [ds], [ds_bps])
        assert c.adapters.adapter_count() == aid
    # an adapter for a base model this node does not serve: never fetched, never listed
    c.adapters.register(ACCT["owner2"], "other-org/other-base-7B", cid, 4, 1, BPS, [], [])
    return ds, contributions


def test_publish_serve_settle_and_pay_to_the_wei(fresh_anvil, tmp_path):
    from node.client.payer import LoraNodeClient
    from node.config import load_config
    from node.dev.devnet import fund_escrow, stake_node

    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    dep = deploy(fresh_anvil.url, KEYS["deployer"], out_dir=None, w3=w3)
    dep_path = dep.save(tmp_path / "deployment.json")
    c = Contracts(w3, dep)
    data = tmp_path / "node"
    cfg = load_config(
        None,
        environ={},
        data_dir=data,
        deployment=dep_path,
        rpc_url=fresh_anvil.url,
        dev_mode=True,
        dev_key_index=1,
        listen_port=0,
        confirmations=0,
        watcher_poll_s=0.3,
        compute_price_per_1k=COMPUTE_PRICE,
        max_tokens_limit=16,
        engine_max_batch=4,
        engine_gpu_slots=2,
        settlement_interval_s=1.0,
        redeem_interval_s=1.0,
    )
    ds, contributions = _publish(c, cfg.ipfs_store_dir, tmp_path)
    fund_escrow(w3, dep, KEYS["deployer"], KEYS["payer"], 10**12, ADDR["node"])
    stake_node(w3, dep, KEYS["deployer"], KEYS["node"])  # only a staked node redeems

    node = NodeThread(cfg).start()
    try:
        # discovery → fetch → verify → load, seen through the API
        ready = _wait(
            lambda: [m["id"] for m in _get(node.url + "/v1/models")["data"]][1:] == ["adapter-1", "adapter-2"],
            180,
            "both adapters loaded",
        )
        assert ready
        client = LoraNodeClient(node.url, KEYS["payer"])
        assert client.quote.node == ADDR["node"]
        msgs = [{"role": "user", "content": "What is the capital of France?"}]

        # attribution: carol contributes exactly what adapter-1 answers; once the node has indexed
        # the new accepted contribution, the receipts of that answer credit it (and their hash binds it)
        ask = [{"role": "user", "content": "Write one sentence about the sea."}]
        answer = client.chat("adapter-1", ask, max_tokens=16, temperature=0).choices[0].message.content
        text_file = tmp_path / "carol.txt"
        text_file.write_text(answer)
        from node.ipfs import EmbeddedStore

        carol_cid = asyncio.run(EmbeddedStore(cfg.ipfs_store_dir).add_path(text_file))
        c.datasets.contribute(ACCT["carol"], ds, carol_cid, len(answer))
        carol_id = c.datasets.contribution_count()
        c.datasets.accept(ACCT["curator"], carol_id, 2)
        contributions["carol"] = (carol_id, 2)

        def attributed():
            r = client.chat("adapter-1", ask, max_tokens=16, temperature=0)
            extra = r.model_extra["receipt"]
            return extra if extra.get("attribution") else None

        att = _wait(attributed, 90, "an attributed receipt", every=1.0)
        assert int(att["attribution"][str(carol_id)]) > 0 and int(att["datasetAttribution"][str(ds)]) > 0
        from chain.eip712 import attribution_hash

        ids = sorted(int(k) for k in att["attribution"])
        assert att["attributionHash"] == "0x" + attribution_hash(ids, [int(att["attribution"][str(i)]) for i in ids]).hex()
        for model in ("adapter-1", "adapter-2", EMBEDDED_MODEL_ID):
            r = client.chat(model, msgs, max_tokens=4, temperature=0)
            assert r.choices[0].message.content
            text = "".join(
                (ch.choices[0].delta.content or "")
                for ch in client.chat_stream(model, msgs, max_tokens=4, temperature=0)
                if ch.choices
            )
            assert text == r.choices[0].message.content  # greedy: streamed = unstreamed
        assert client.complete("adapter-1", "The sky is", max_tokens=3, temperature=0).choices[0].text
        # the adapter for another base model is refused with a reason, the node keeps serving
        import openai

        with pytest.raises(openai.NotFoundError, match="other-base"):
            client.chat("adapter-3", msgs, max_tokens=2)
        receipts = list(client.receipts)
        assert len(receipts) >= 9 and sorted(r.receipt.seq for r in receipts) == list(range(1, len(receipts) + 1))

        # the last request of each lane is the unpaid one (loss cap); the client settles up
        client.settle_up()

        # settlement: every receipt committed with a proof, every lane redeemed up to its total
        def committed():
            got = [_get(f"{node.url}/v1/receipts/0x{r.receipt.request_id.hex()}") for r in receipts]
            return got if all(g["status"] == "committed" for g in got) else None

        proofs = _wait(committed, 120, "receipts committed on chain")
        lanes = {0: (0, 0), 1: (0, 0), 2: (0, 0)}
        for aid in lanes:
            lanes[aid] = client.wallet.totals(aid)

        def collected(aid):
            got = c.escrow.collected(ADDR["payer"], ADDR["node"], aid)
            return got.compute, got.adapter

        _wait(lambda: all(collected(aid) == lanes[aid] for aid in lanes), 120, "vouchers redeemed")
        # the dataset parts wait in the node's attribution pools until each batch is settled there
        _wait(
            lambda: c.pool.settled_seq(ADDR["node"]) == c.receipts.last_seq(ADDR["node"]),
            120,
            "batches settled in AttributionPool",
        )
        with urllib.request.urlopen(node.url + "/metrics", timeout=30) as r:  # noqa: S310 - the test's own loopback node
            metrics = r.read().decode()
        loads = [ln for ln in metrics.splitlines() if ln.startswith("loranode_adapters_loads_total ")]
        assert loads and float(loads[0].split()[-1]) == 2  # the lifecycle loaded both adapters
        assert "loranode_settlement_lag_seconds" in metrics and "loranode_engine_adapters_slot_loads_total" in metrics
        health = _get(node.url + "/healthz")
        assert {name: loop["state"] for name, loop in health["background"].items()} == {
            "escrow_follower": "running",
            "watcher": "running",
            "lifecycle": "running",
            "settlement": "running",
            "attribution": "running",
        }
        assert all(loop["restarts"] == 0 for loop in health["background"].values())
    finally:
        node.stop()
    assert not node.thread.is_alive(), "node did not stop"

    # every receipt verifies on chain; a tampered one does not
    for r, p in zip(receipts, proofs, strict=True):
        proof = [bytes.fromhex(x[2:]) for x in p["proof"]]
        assert c.receipts.verify_receipt(r.receipt, p["batch"]["seq"], proof)
    forged = replace(receipts[0].receipt, completion_tokens=receipts[0].receipt.completion_tokens + 1)
    p0 = proofs[0]
    assert not c.receipts.verify_receipt(forged, p0["batch"]["seq"], [bytes.fromhex(x[2:]) for x in p0["proof"]])

    # what the node signed = what the escrow paid, lane by lane
    for aid, (cc, ac) in lanes.items():
        signed = [r.receipt for r in receipts if r.receipt.adapter_id == aid]
        assert (sum(r.compute_cost for r in signed), sum(r.adapter_cost for r in signed)) == (cc, ac)
        tokens = [r.prompt_tokens + r.completion_tokens for r in signed]
        price = ADAPTERS[aid][1] if aid else 0
        assert cc == sum(-(-t * COMPUTE_PRICE // 1000) for t in tokens)
        assert ac == sum(-(-t * price // 1000) for t in tokens)

    # RewardVault, to the wei: replay the registered splits over the redeemed increases
    logs = w3.eth.get_logs(
        {"fromBlock": 0, "toBlock": "latest", "address": [dep.addresses["UsageEscrow"], dep.addresses["DatasetRegistry"]]}
    )
    events = c.decode_events(logs)
    fee_bps = c.escrow.protocol_fee().bps
    expect = {k: 0 for k in ("node", "deployer", "owner1", "owner2")}
    dataset_shares = 0
    for ev in events:
        if type(ev).__name__ != "VoucherRedeemed":
            continue
        expect["node"] += ev.compute_paid
        if ev.adapter_id:
            owner, _, owner_bps, ds_bps = ADAPTERS[ev.adapter_id]
            fee = ev.adapter_paid * fee_bps // BPS
            rest = ev.adapter_paid - fee
            share = rest * ds_bps // BPS
            expect["deployer"] += fee
            expect[owner] += rest - share
            dataset_shares += share
    assert expect["node"] == sum(cc for cc, _ in lanes.values())
    assert expect["deployer"] + expect["owner1"] + expect["owner2"] + dataset_shares == sum(a for _, a in lanes.values())
    # contributors: replay the dataset's reward-per-weight accumulator in chain order (a contribution
    # accepted later earns only from later payments)
    # (attributed parts are credited to the contributions the answers drew on; the rest by weight)
    rewarded = [ev for ev in events if type(ev).__name__ == "DatasetRewarded"]
    from node.attribution_rewards.breakdown import attributed_credits

    attributed, unreadable = attributed_credits(c, c.deployment.start_block)  # no event per credit: from the settles
    assert unreadable == 0
    assert sum(ev.amount for ev in rewarded) + sum(attributed.values()) == dataset_shares > 0
    by_id = {cid_id: who for who, (cid_id, _) in contributions.items()}
    acc, total_weight, debt, weights = 0, 0, {}, {}
    for ev in sorted(events, key=lambda e: (e.block_number, e.log_index)):
        kind = type(ev).__name__
        if kind == "ContributionAccepted" and ev.contribution_id in by_id:
            who = by_id[ev.contribution_id]
            weights[who], debt[who] = ev.weight, -(-ev.weight * acc // ACC_PRECISION)  # rounded up
            total_weight += ev.weight
        elif kind == "DatasetRewarded":
            acc += ev.amount * ACC_PRECISION // total_weight
    for who, w in weights.items():
        expect[who] = max(0, w * acc // ACC_PRECISION - debt[who])
        expect[who] += sum(amount for cid_id, amount in attributed.items() if by_id.get(cid_id) == who)
    c.datasets.harvest(ACCT["deployer"], [cid_id for cid_id, _ in contributions.values()])
    for who, amount in expect.items():
        assert c.vault.claimable(ADDR[who]) == amount, who
    assert expect["alice"] > expect["bob"] > 0 and expect["carol"] > 0 and expect["owner1"] > 0 and expect["owner2"] > 0
    # and the money is real: the node claims its compute revenue in tokens
    before = c.token.balance_of(ADDR["node"])
    c.vault.claim(ACCT["node"])
    assert c.token.balance_of(ADDR["node"]) - before == expect["node"]

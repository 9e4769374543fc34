"""Settlement on anvil with the real contracts, the embedded IPFS store and the node DB:
receipts → Merkle batches → ReceiptLog; vouchers → UsageEscrow.redeem → RewardVault splits.

Crash safety: a separate process runs settlement and SIGKILLs itself at each step (after the batch
DB write, after enqueueing, after signing, after broadcast, after mining — for the commit and for
the redeem tx — and after the DB records the outcome); a restarted settlement then finishes.
In the end every receipt is committed exactly once (and verifies on chain), every lane collected
exactly its newest voucher, and the vault balances match the registered splits to the wei.
Also: the RPC down for a while (a proxy whose port dies and comes back) — receipts keep being
written, settlement catches up once the chain is back."""

from __future__ import annotations

import asyncio
import runpy
import textwrap
from pathlib import Path

import pytest
from crash import run_until_sigkilled
from eth_account import Account
from sqlalchemy import select
from web3 import Web3

from chain.contracts import Contracts
from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import (
    NO_ATTRIBUTION_HASH,
    Receipt as R,
    SignedReceipt,
    Voucher as V,
    output_hash,
    receipt_digest,
    sign_digest,
    sign_voucher,
)
from inference.embedded_model import EMBEDDED_MODEL_ID
from node.db import BatchStatus, OutboxIntent, ReceiptBatch, ReceiptRow, VoucherRow, make_session_factory, migrate
from node.db import repository as repo

REPO = Path(__file__).resolve().parents[2]
DEPLOYER, OPERATOR, PAYER, OWNER, CURATOR, CONTRIB = (Account.from_key(DEV_PRIVATE_KEYS[i]) for i in range(6))
BASE = EMBEDDED_MODEL_ID

BUILDER = textwrap.dedent('''
    import asyncio, os, signal, sys
    from web3 import Web3
    from chain.contracts import Contracts
    from chain.deploy import Deployment
    from chain.devchain import DEV_PRIVATE_KEYS
    from eth_account import Account
    from node.db import make_session_factory
    from node.ipfs import EmbeddedStore
    from node.daemon.settlement.settler import Settlement

    def build(db_url, rpc_url, dep_path, data_dir, on_step=None, **kw):
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 5}))
        contracts = Contracts(w3, Deployment.load(dep_path))
        return Settlement(make_session_factory(db_url), w3, Account.from_key(DEV_PRIVATE_KEYS[1]), contracts,
                          EmbeddedStore(os.path.join(data_dir, "ipfs")), receipts_dir=os.path.join(data_dir, "receipts"),
                          batch_size=4, interval_s=3600, redeem_interval_s=3600, on_step=on_step, **kw)

    def crash_at(point, db_url, rpc_url, dep_path, data_dir):
        """Settle everything, but SIGKILL this process at the `point`-th ("name:k") step."""
        name, _, nth = point.partition(":")
        seen = [0]
        def on_step(step):
            if step == name:
                seen[0] += 1
                if seen[0] == int(nth or 1):
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real crash
        asyncio.run(build(db_url, rpc_url, dep_path, data_dir, on_step).flush(timeout=60))
        sys.exit(3)  # the crash point was never reached

    if __name__ == "__main__":
        crash_at(*sys.argv[1:6])
''')


@pytest.fixture
def world(fresh_anvil, tmp_path, request):
    """Full deployment; payer funded and deposited; adapter 1 (70 % owner, 30 % dataset 1).
    The settlement builder is written to a script so the same code runs standalone too:
    `python settle.py DB_URL RPC_URL DEPLOYMENT DATA_DIR crash_point`."""
    dep = deploy(fresh_anvil.url, DEV_PRIVATE_KEYS[0], protocol_fee_bps=500, out_dir=None)
    dep_path = dep.save(tmp_path / "deployment.json")
    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    c = Contracts(w3, dep)
    c.token.mint(DEPLOYER, PAYER.address, 10**24)
    c.token.approve(PAYER, c.escrow.address, 10**24)
    c.escrow.deposit(PAYER, OPERATOR.address, 10**22)
    min_bond = c.nodes.dispute_terms().min_bond  # only a staked node redeems
    c.token.mint(DEPLOYER, OPERATOR.address, min_bond)
    c.token.approve(OPERATOR, c.nodes.address, min_bond)
    c.nodes.register(OPERATOR, "http://127.0.0.1:8080", [BASE], 1000, min_bond)
    c.datasets.create_dataset(CURATOR, "d", "MIT", "m")
    c.datasets.contribute(CONTRIB, 1, "bafyc", 100)
    c.datasets.accept(CURATOR, 1, 5)
    c.adapters.register(OWNER, BASE, "bafyadapter", 8, 1000, 7000, [1], [3000])
    url = (
        request.getfixturevalue("pg_url")
        if getattr(request, "param", "sqlite") == "postgres"
        else f"sqlite:///{tmp_path / 'node.db'}"
    )
    migrate(url)
    script = tmp_path / "settle.py"
    script.write_text(BUILDER)
    return {
        "anvil": fresh_anvil,
        "w3": w3,
        "c": c,
        "dep": dep,
        "dep_path": str(dep_path),
        "db_url": url,
        "data": str(tmp_path),
        "script": str(script),
        "sessions": make_session_factory(url),
    }


class Client:
    """Plays the API's part: signs receipts as the node, stores vouchers the payer signed."""

    def __init__(self, world):
        self.w, self.n = world, 0
        self.owed: dict[int, list[int]] = {0: [0, 0], 1: [0, 0]}

    def serve(self, adapter_id: int, compute: int, adapter: int) -> None:
        w, c = self.w, self.w["c"]
        self.n += 1
        self.owed[adapter_id][0] += compute
        self.owed[adapter_id][1] += adapter
        with w["sessions"].begin() as s:
            seq = repo.next_receipt_seq(s)
            r = R(
                request_id=self.n.to_bytes(32, "big"),
                payer=PAYER.address,
                node=OPERATOR.address,
                adapter_id=adapter_id,
                seq=seq,
                prompt_tokens=10,
                completion_tokens=5,
                compute_cost=compute,
                adapter_cost=adapter,
                output_hash=output_hash(f"answer {self.n}"),
                attribution_hash=NO_ATTRIBUTION_HASH,
                timestamp=1_700_000_000 + self.n,
            )
            digest = receipt_digest(r, w["dep"].chain_id, c.receipts.address)
            signed = SignedReceipt(r, sign_digest(digest, OPERATOR.key))
            lane = repo.lane_key(PAYER.address, OPERATOR.address, adapter_id)
            repo.store_receipt(
                s, seq=seq, request_id="0x" + r.request_id.hex(), lane=lane, receipt=signed.to_json(), digest="0x" + digest.hex()
            )
            v = V(PAYER.address, OPERATOR.address, adapter_id, *self.owed[adapter_id])
            sig = sign_voucher(v, PAYER.key, w["dep"].chain_id, c.escrow.address)
            repo.store_voucher(
                s,
                lane=lane,
                payer=PAYER.address,
                node=OPERATOR.address,
                adapter_id=adapter_id,
                compute_value=v.compute_value,
                adapter_value=v.adapter_value,
                signature="0x" + sig.hex(),
            )


def settlement(world, **kw):
    ns = runpy.run_path(world["script"])  # the same builder the crashing process uses
    return ns["build"](world["db_url"], kw.pop("rpc_url", world["anvil"].url), world["dep_path"], world["data"], **kw)


def check_exactly_once(world, client: Client) -> None:
    c, sessions = world["c"], world["sessions"]
    with sessions() as s:
        batches = list(s.scalars(select(ReceiptBatch).order_by(ReceiptBatch.seq)))
        receipts = list(s.scalars(select(ReceiptRow).order_by(ReceiptRow.seq)))
    assert receipts and all(b.status == BatchStatus.COMMITTED.value for b in batches)
    assert c.receipts.last_seq(OPERATOR.address) == len(batches) == batches[-1].seq
    # on chain: the BatchCommitted events count every receipt exactly once
    logs = world["w3"].eth.get_logs({"fromBlock": 0, "toBlock": "latest", "address": c.receipts.address})
    committed = [e for e in c.decode_events(logs) if type(e).__name__ == "BatchCommitted"]
    assert sorted(e.seq for e in committed) == list(range(1, len(batches) + 1))  # each batch once
    assert sum(e.count for e in committed) == len(receipts) == client.n
    # every receipt proves its membership with verifyReceipt
    with sessions() as s:
        for r in receipts:
            p = repo.receipt_with_proof(s, r.request_id)
            assert p.committed
            assert c.receipts.verify_receipt(
                SignedReceipt.from_json(p.receipt).receipt, p.batch_seq, [bytes.fromhex(x[2:]) for x in p.proof]
            )
    # vouchers: every lane collected exactly its newest voucher, and was paid once
    for adapter_id, (compute, adapter) in client.owed.items():
        col = c.escrow.collected(PAYER.address, OPERATOR.address, adapter_id)
        assert (col.compute, col.adapter) == (compute, adapter)
        with sessions() as s:
            v = s.get(VoucherRow, repo.lane_key(PAYER.address, OPERATOR.address, adapter_id))
            if compute == adapter == 0:
                assert v is None  # lane never used
                continue
            assert (v.redeemed_compute, v.redeemed_adapter, v.redeem_outbox_id) == (compute, adapter, None)
    total = sum(a + b for a, b in client.owed.values())
    assert c.escrow.account_of(PAYER.address, OPERATOR.address).balance == 10**22 - total
    logs = world["w3"].eth.get_logs({"fromBlock": 0, "toBlock": "latest", "address": c.escrow.address})
    paid = [e for e in c.decode_events(logs) if type(e).__name__ == "VoucherRedeemed"]
    for adapter_id, (compute, adapter) in client.owed.items():  # increments add up: nothing paid twice
        lane = [e for e in paid if e.adapter_id == adapter_id]
        assert (sum(e.compute_paid for e in lane), sum(e.adapter_paid for e in lane)) == (compute, adapter)
    # the split of each paid increment, per the registered bps (fee 5 %, then 30 % dataset, owner the rest)
    fee = sum(e.adapter_paid * 500 // 10_000 for e in paid)
    ds = sum((e.adapter_paid - e.adapter_paid * 500 // 10_000) * 3000 // 10_000 for e in paid)
    assert c.vault.claimable(OPERATOR.address) == client.owed[0][0] + client.owed[1][0]
    assert c.vault.claimable(OWNER.address) == client.owed[1][1] - fee - ds  # owner gets the rounding dust
    assert c.vault.claimable(DEPLOYER.address) == fee  # protocol fee recipient
    assert c.datasets.pending_reward(1) + c.vault.claimable(CONTRIB.address) == ds


@pytest.mark.parametrize("world", ["sqlite", "postgres"], indirect=True)
async def test_batches_commit_and_vouchers_redeem(world):
    client = Client(world)
    for i in range(10):
        client.serve(i % 2, 100 + i, (7 + i) if i % 2 else 0)
    st = settlement(world)
    await st.run_once()  # two full batches of 4 go at once; the 2 left wait for the interval
    with world["sessions"]() as s:
        assert s.scalar(select(ReceiptBatch.seq).order_by(ReceiptBatch.seq.desc())) == 2
        assert repo.pending_receipt_count(s) == 2
    assert st.lag_seconds() > 0
    await st.flush()
    check_exactly_once(world, client)
    assert st.pending_receipts() == 0 and st.lag_seconds() == 0
    # the receipts file on IPFS is the batch (content-addressed, fetched back and parsed)
    with world["sessions"]() as s:
        cid = s.get(ReceiptBatch, 1).cid
    from node.ipfs import EmbeddedStore

    got = await EmbeddedStore(Path(world["data"]) / "ipfs").fetch(cid, Path(world["data"]) / "got", 1 << 20)
    import json

    doc = json.loads(got.read_text())
    assert doc["batchSeq"] == 1 and len(doc["receipts"]) == 4 and doc["node"] == OPERATOR.address
    assert doc["version"] == 2  # no span lacks its contributionStart
    # idempotent: nothing more to do, no new transaction
    nonce = world["w3"].eth.get_transaction_count(OPERATOR.address)
    await st.run_once(force=True)
    assert world["w3"].eth.get_transaction_count(OPERATOR.address) == nonce


CRASH_POINTS = [
    "batch_stored",
    "commit_enqueued",
    "signed:1",
    "broadcast:1",
    "mined:1",
    "batch_committed",
    "redeem_enqueued",
    "signed:2",
    "broadcast:2",
    "mined:2",
    "voucher_settled",
]


def _settle_until_killed(_report, script: str, point: str, *args: str) -> None:
    """The node process (a fresh interpreter, see crash.py): the builder script's `crash_at`, with
    its own event loop, DB engine and RPC connections; it dies by SIGKILL at `point`."""
    runpy.run_path(script)["crash_at"](point, *args)


def test_sigkill_at_every_settlement_step_then_restart(world):
    """Sync test on purpose: the crashing node is a child process (a fresh interpreter: a fork of
    this multi-threaded process can inherit locks held by other threads and hang); it runs its own
    event loop, DB engine and RPC connections, and dies by SIGKILL at the step under test."""
    client = Client(world)
    args = (world["db_url"], world["anvil"].url, world["dep_path"], world["data"])
    for k, point in enumerate(CRASH_POINTS):
        for i in range(3):  # new work each round: 3 receipts, both lanes' vouchers move up
            client.serve(i % 2, 10 + k, (3 + k) if i % 2 else 0)
        run_until_sigkilled(_settle_until_killed, world["script"], point, *args, what=point)
        asyncio.run(settlement(world).flush())  # the restarted node finishes what the dead one started
    check_exactly_once(world, client)
    # the outbox never sent two transactions for one intent: nonces are contiguous and each mined once
    with world["sessions"]() as s:
        from node.db import OutboxIntent

        intents = list(s.scalars(select(OutboxIntent).order_by(OutboxIntent.nonce)))
    first = intents[0].nonce  # the operator's setup transactions (approve, register) came before
    assert [i.nonce for i in intents] == list(range(first, first + len(intents)))
    assert all(i.status == "mined" for i in intents)
    assert world["w3"].eth.get_transaction_count(OPERATOR.address) == first + len(intents)


async def test_rpc_down_for_a_while_then_settlement_catches_up(world, rpc_proxy):
    client = Client(world)
    st = settlement(world, rpc_url=rpc_proxy.url, poll_s=0.05)
    client.serve(1, 5, 5)
    await st.flush()
    rpc_proxy.stop()
    stop = asyncio.Event()
    task = asyncio.create_task(st.run(stop))
    for i in range(9):  # serving continues: receipts and vouchers keep landing in the DB
        client.serve(i % 2, 20, 4 if i % 2 else 0)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    assert st.last_error is not None and st.pending_receipts() == 9 and not task.done()
    rpc_proxy.start()
    st.poll_s = 0.05
    for _ in range(200):
        await asyncio.sleep(0.05)
        if st.last_error is None and st.pending_receipts() <= 1:
            break
    stop.set()
    await asyncio.wait_for(task, 10)
    await st.flush()
    check_exactly_once(world, client)


async def test_reconcile_refuses_a_db_that_contradicts_the_chain(world):
    client = Client(world)
    for _ in range(4):
        client.serve(0, 1, 0)
    await settlement(world).flush()
    with world["sessions"].begin() as s:
        s.get(ReceiptBatch, 1).root = "0x" + "ab" * 32
    from node.daemon.settlement.settler import SettlementError

    with pytest.raises(SettlementError, match="does not belong"):
        await settlement(world).run_once()


async def test_reorg_shallower_than_confirmations_rebroadcasts_the_commit(world):
    """With confirmations = 2 a mined commit is not final yet; a 1-block reorg drops it; the outbox
    rebroadcasts the same signed bytes and the batch is committed exactly once."""
    client = Client(world)
    for _ in range(4):
        client.serve(0, 3, 0)
    st = settlement(world, confirmations=2)
    await st.run_once()
    c, w3 = world["c"], world["w3"]
    assert c.receipts.last_seq(OPERATOR.address) == 1  # mined ...
    with world["sessions"]() as s:
        assert s.get(ReceiptBatch, 1).status == BatchStatus.PENDING.value  # ... but not final
        block = s.scalar(select(OutboxIntent.block_number).where(OutboxIntent.key.like("commit:%")))
    assert block is None
    # replace the commit's block (and the redeem after it): depth 1-2 < confirmations + 1
    w3.provider.make_request(
        "anvil_reorg", [w3.eth.block_number - _commit_block(w3, OPERATOR.address, c.receipts.address) + 1, []]
    )
    assert c.receipts.last_seq(OPERATOR.address) == 0
    await st.run_once()  # the tx is unknown to the node now: same bytes again
    assert c.receipts.last_seq(OPERATOR.address) == 1
    for _ in range(3):
        w3.provider.make_request("anvil_mine", ["0x1"])
        await st.run_once(force=True)
    w3.provider.make_request("anvil_mine", ["0x3"])
    await st.flush()
    check_exactly_once(world, client)


def _commit_block(w3, sender: str, receipt_log: str) -> int:
    """Block of the sender's first transaction to ReceiptLog (the commit)."""
    first = None
    for n in range(w3.eth.block_number, 0, -1):
        if any(t["from"] == sender and t["to"] == receipt_log for t in w3.eth.get_block(n, True)["transactions"]):
            first = n
    if first is not None:
        return first
    raise AssertionError("commit transaction not found")


async def test_issue9_underfunded_lane_is_parked_until_a_deposit(world):
    """Issue #9: an underfunded lane was retried with a redeem transaction at every interval forever.
    Now the escrow pays what it has, the lane is parked (no more redeem transactions), and a deposit
    wakes it: the same voucher then collects the rest."""
    c = world["c"]
    client = Client(world)
    client.serve(0, 10**22 + 500, 0)  # more than the payer deposited for this node
    st = settlement(world)
    await st.flush()

    def redeems() -> int:
        with world["sessions"]() as s:
            return len(list(s.scalars(select(OutboxIntent).where(OutboxIntent.key.like("redeem:%")))))

    assert c.escrow.collected(PAYER.address, OPERATOR.address, 0).compute == 10**22  # all there was
    assert redeems() == 1
    for _ in range(3):
        await st.run_once(force=True)
    assert redeems() == 1  # parked: no redeem transaction per interval
    with world["sessions"]() as s:
        assert s.get(VoucherRow, repo.lane_key(PAYER.address, OPERATOR.address, 0)).redeem_error.startswith("parked:")
    c.escrow.deposit(PAYER, OPERATOR.address, 1000)
    await st.flush()
    assert redeems() == 2
    assert c.escrow.collected(PAYER.address, OPERATOR.address, 0).compute == 10**22 + 500
    assert c.escrow.account_of(PAYER.address, OPERATOR.address).balance == 500
    with world["sessions"]() as s:
        assert s.get(VoucherRow, repo.lane_key(PAYER.address, OPERATOR.address, 0)).redeem_error is None


async def test_a_node_proven_to_lie_settles_no_attribution(world, caplog):
    """Once the node's bond is condemned (here: a proven equivocation), AttributionPool refuses its
    settles. The settlement must not send one per pass forever, nor wait for one in `flush`: it
    sends none, says so once, and leaves the pool to anyone's flush."""
    from chain.eip712 import sign_receipt

    c = world["c"]
    client = Client(world)
    client.serve(1, 100, 7000)
    st = settlement(world)
    await st.flush()
    assert c.pool.settled_seq(OPERATOR.address) == 1  # in good standing, the batch settles
    a, b = (
        R(
            request_id=bytes([k]) * 32,
            payer=PAYER.address,
            node=OPERATOR.address,
            adapter_id=0,
            seq=99,
            prompt_tokens=1,
            completion_tokens=1,
            compute_cost=1,
            adapter_cost=0,
            output_hash=bytes(32),
            attribution_hash=NO_ATTRIBUTION_HASH,
            timestamp=1,
        )
        for k in (1, 2)
    )
    sig = [sign_receipt(r, OPERATOR.key, world["dep"].chain_id, c.receipts.address) for r in (a, b)]
    c.nodes.slash_equivocation(CONTRIB, a, sig[0], b, sig[1])
    assert not c.nodes.can_redeem(OPERATOR.address)
    client.serve(1, 100, 7000)
    st.attribution.max_wait_s = 0  # batch 2 is ready at once, paid or not
    with caplog.at_level("WARNING", logger="node.daemon.settlement.attribution"):
        for _ in range(3):
            report = await st.run_once(force=True)
            assert report.attribution_sent == 0
    assert c.receipts.last_seq(OPERATOR.address) == 2 and c.pool.settled_seq(OPERATOR.address) == 1
    assert not st.attribution.pending(2)
    with world["sessions"]() as s:
        keys = list(s.scalars(select(OutboxIntent.key).where(OutboxIntent.key.like("%:settle:%"))))
        keys += s.scalars(select(OutboxIntent.key).where(OutboxIntent.key.like("attribution:%")))
    assert len(keys) == 1 and keys[0].endswith(":settle:1")  # batch 1's only, inside its redeem
    said = [r for r in caplog.records if "no bond at stake" in r.getMessage()]
    assert len(said) == 1


async def test_the_settle_rides_in_the_redeem_that_completes_the_batch_payment(world):
    """Two adapter lanes of one batch redeemed in separate groups (redeem_batch_size 1): the settle
    rides in the redeem that completes the batch's payment (UsageEscrow.redeemAndSettle), after the
    other in nonce order, so no separate settle is sent, and the dataset is paid in full."""
    c = world["c"]
    c.adapters.register(CURATOR, BASE, "bafyadapter2", 8, 1000, 7000, [1], [3000])  # adapter 2: dataset 1 too
    client = Client(world)
    client.owed[2] = [0, 0]
    client.serve(1, 100, 7000)
    client.serve(2, 100, 9000)
    client.serve(0, 50, 0)
    st = settlement(world, redeem_batch_size=1)
    await st.flush()
    assert c.receipts.last_seq(OPERATOR.address) == 1 and c.pool.settled_seq(OPERATOR.address) == 1
    with world["sessions"]() as s:
        redeems = list(s.scalars(select(OutboxIntent.key).where(OutboxIntent.key.like("redeem:%"))))
        alone = list(s.scalars(select(OutboxIntent.key).where(OutboxIntent.key.like("attribution:%"))))
    assert len(redeems) == 3 and sum(k.endswith(":settle:1") for k in redeems) == 1 and alone == []
    for adapter_id, (compute, adapter) in client.owed.items():
        col = c.escrow.collected(PAYER.address, OPERATOR.address, adapter_id)
        assert (col.compute, col.adapter) == (compute, adapter)
    # no receipt drew on a contribution: both lanes' dataset parts go by accepted weight (contribution 1 alone)
    ds = sum((a - a * 500 // 10_000) * 3000 // 10_000 for a in (7000, 9000))
    assert c.pool.pool_of(OPERATOR.address, 1).balance == 0
    assert ds - 1 <= c.datasets.pending_reward(1) <= ds

"""Receipts written by group commit (node.db.group_commit + Ledger.append_receipts) on a real SQLite
file: consecutive seqs, one transaction per group, a bad job failing alone, lane totals moving only
after the commit, and a receipt durable once `issue_async` returned (a SIGKILLed process right after)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from crash import run_until_sigkilled
from eth_account import Account
from sqlalchemy import select

from chain.eip712 import NO_ATTRIBUTION_HASH, SignedVoucher, Voucher, sign_voucher
from node.db import ReceiptRow, make_session_factory, migrate
from node.db.group_commit import GroupCommitter
from node.daemon.payments.ledger import Ledger
from node.metering import Cost
from node.daemon.payments.gate import Lane
from node.daemon.payments.receipts import ReceiptIssuer, new_request_id

CHAIN_ID, RECEIPT_LOG, ESCROW = 31337, "0x" + "22" * 20, "0x" + "11" * 20
OPERATOR, PAYER = Account.from_key("0x" + "a1" * 32), Account.from_key("0x" + "b2" * 32)
NO_ATT = (NO_ATTRIBUTION_HASH, {})
COST = Cost(3, 5)  # a request's cost, unless a test says otherwise


@pytest.fixture
def world(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    ledger = Ledger(make_session_factory(url))
    issuer = ReceiptIssuer(operator=OPERATOR, chain_id=CHAIN_ID, receipt_log=RECEIPT_LOG, ledger=ledger)
    return url, ledger, issuer


def lane(adapter: int) -> Lane:
    return Lane(PAYER.address, OPERATOR.address, adapter)


def issue(issuer, ln, cost=COST, **kw):
    return issuer.issue_async(
        request_id=new_request_id(), lane=ln, prompt_tokens=4, completion_tokens=2, cost=cost, text="hi", attribution=NO_ATT, **kw
    )


def stored(url) -> list[ReceiptRow]:
    with make_session_factory(url)() as s:  # a fresh engine: only what was committed
        return list(s.scalars(select(ReceiptRow).order_by(ReceiptRow.seq)))


def test_concurrent_receipts_share_transactions_and_get_consecutive_seqs(world):
    url, ledger, issuer = world

    async def run():
        out = await asyncio.gather(*(issue(issuer, lane(a)) for a in range(1, 17)))
        return out, issuer.committer.groups_written

    issued, groups = asyncio.run(run())
    assert groups == 1  # all 16 arrived before the first write started
    seqs = sorted(i.signed.receipt.seq for i in issued)
    assert seqs == list(range(1, 17))
    rows = stored(url)
    assert [r.seq for r in rows] == seqs
    for i in issued:  # each receipt recovers to the operator and is stored under its own request id
        assert i.signed.signer(CHAIN_ID, RECEIPT_LOG) == OPERATOR.address
    assert {r.request_id for r in rows} == {"0x" + i.signed.receipt.request_id.hex() for i in issued}
    assert all(ledger.get(lane(a)).owed_compute == 3 and ledger.get(lane(a)).owed_adapter == 5 for a in range(1, 17))
    # the totals survive a restart: rebuilt from the committed rows
    assert Ledger(make_session_factory(url)).get(lane(7)).owed_adapter == 5


def test_a_bad_job_fails_alone_and_leaves_no_seq_gap(world):
    url, ledger, issuer = world
    real = issuer.receipt_maker

    def maker(**kw):
        make = real(**kw)
        if kw["lane"].adapter_id == 3:

            def broken(seq):
                raise ValueError("signer unavailable")

            return broken
        return make

    issuer.receipt_maker = maker

    async def run():
        return await asyncio.gather(*(issue(issuer, lane(a)) for a in range(1, 6)), return_exceptions=True)

    out = asyncio.run(run())
    assert isinstance(out[2], ValueError) and "signer unavailable" in str(out[2])
    good = [o for k, o in enumerate(out) if k != 2]
    assert sorted(o.signed.receipt.seq for o in good) == [1, 2, 3, 4]  # the failed group was rolled back
    assert [r.seq for r in stored(url)] == [1, 2, 3, 4]
    assert ledger.get(lane(3)).owed_compute == 0  # nothing was charged for the request without a receipt


def test_same_lane_twice_in_one_group_accumulates_and_operator_voucher_covers_both(world):
    """Operator-funded mode signs the lane's new cumulative total with each receipt; two receipts of
    one lane in one transaction must see each other's cost (the API's lane lock normally prevents
    this, the ledger must not rely on it)."""
    url, ledger, issuer = world
    ln = Lane(OPERATOR.address, OPERATOR.address, 9)

    def op_voucher(c, a):
        v = Voucher(ln.payer, ln.node, ln.adapter_id, c, a)
        return SignedVoucher(v, sign_voucher(v, OPERATOR, CHAIN_ID, ESCROW))

    async def run():
        return await asyncio.gather(
            issue(issuer, ln, Cost(1, 2), operator_voucher=op_voucher),
            issue(issuer, ln, Cost(10, 20), operator_voucher=op_voucher),
        )

    asyncio.run(run())
    state = ledger.get(ln)
    assert (state.owed_compute, state.owed_adapter) == (11, 22)
    assert (state.voucher.voucher.compute_value, state.voucher.voucher.adapter_value) == (11, 22)
    reloaded = Ledger(make_session_factory(url)).get(ln)
    assert (reloaded.owed_compute, reloaded.voucher.voucher.adapter_value) == (11, 22)


def test_a_cancelled_caller_still_gets_its_receipt_written(world):
    url, _, issuer = world

    async def run():
        t = asyncio.ensure_future(issue(issuer, lane(1)))
        await asyncio.sleep(0)  # submitted, the group is being written
        t.cancel()
        await issuer.committer.close()

    asyncio.run(run())
    assert len(stored(url)) == 1


def test_group_committer_rejects_a_wrong_result_count_for_every_job():
    async def run():
        c = GroupCommitter(lambda jobs: [1], max_group=8)
        return await asyncio.gather(c.submit("a"), c.submit("b"), return_exceptions=True)

    out = asyncio.run(run())
    assert all(isinstance(o, RuntimeError) for o in out)
    with pytest.raises(ValueError):
        GroupCommitter(lambda jobs: jobs, max_group=0)


def _issue_then_die(report, url: str) -> None:
    """The node process: its own engine and loop; reports the request id, then dies by SIGKILL."""
    led = Ledger(make_session_factory(url))
    iss = ReceiptIssuer(operator=OPERATOR, chain_id=CHAIN_ID, receipt_log=RECEIPT_LOG, ledger=led)
    issued = asyncio.run(issue(iss, lane(1)))
    report(issued.signed.receipt.request_id)
    os.kill(os.getpid(), signal.SIGKILL)


def test_receipt_is_durable_once_issue_async_returned_even_if_the_process_is_killed(world):
    """The node's promise: a receipt is never lost once its response could be sent. A node process
    (a fresh interpreter) issues a receipt, reports its request id, and dies by SIGKILL (no cleanup,
    no flush)."""
    url, _, _ = world
    [rid] = run_until_sigkilled(_issue_then_die, url)
    assert len(rid) == 32
    assert [row.request_id for row in stored(url)] == ["0x" + rid.hex()]


def test_lanes_of_lists_a_payers_lanes_from_receipts_vouchers_and_a_restart(world):
    url, ledger, issuer = world
    other = Account.from_key("0x" + "c3" * 32)

    async def run():
        await asyncio.gather(
            issue(issuer, lane(1)), issue(issuer, lane(2)), issue(issuer, Lane(other.address, OPERATOR.address, 1))
        )

    asyncio.run(run())
    v = Voucher(PAYER.address, OPERATOR.address, 5, 7, 0)
    ledger.store_voucher(SignedVoucher(v, sign_voucher(v, PAYER, CHAIN_ID, ESCROW)))
    for led in (ledger, Ledger(make_session_factory(url))):
        mine = {ln.adapter_id: st for ln, st in led.lanes_of(PAYER.address, OPERATOR.address)}
        assert set(mine) == {1, 2, 5}
        assert mine[1].owed_compute == 3 and mine[5].voucher.voucher.compute_value == 7
        assert [ln.adapter_id for ln, _ in led.lanes_of(other.address, OPERATOR.address)] == [1]
        assert led.lanes_of(OPERATOR.address, OPERATOR.address) == []


def test_the_committer_serves_a_new_event_loop_after_the_old_one_stopped(world):
    """A loop stopped without cancelling its tasks leaves the drain task unfinished; the next loop
    still gets its receipts written."""
    url, _, issuer = world
    old = asyncio.new_event_loop()
    try:

        async def submit_and_stop():
            asyncio.ensure_future(issue(issuer, lane(1)))
            await asyncio.sleep(0)  # the drain task exists now
            old.stop()

        old.create_task(submit_and_stop())
        old.run_forever()
        assert issuer.committer._task is not None and not issuer.committer._task.done()
    finally:
        old.close()
    issued = asyncio.run(asyncio.wait_for(issue(issuer, lane(2)), 60))
    assert issued.signed.receipt.adapter_id == 2
    assert "0x" + issued.signed.receipt.request_id.hex() in {r.request_id for r in stored(url)}

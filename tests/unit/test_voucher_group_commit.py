"""Vouchers written by group commit (PaymentGate's voucher writer + Ledger.store_vouchers) on a real
SQLite file: concurrent admissions share transactions, a group is taken in order (two vouchers of
one lane end with the dominating one), a bad voucher fails alone, and an admission returns only
after its voucher committed (also across a SIGKILL right after it returned)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest
from crash import run_until_sigkilled
from eth_account import Account
from sqlalchemy import event, select

from chain.eip712 import SignedVoucher, Voucher, sign_voucher
from node.db import VoucherRow, make_session_factory, migrate
from node.db import repository as repo
from node.db.group_commit import GroupCommitter
from node.db.repository import VoucherRegression
from node.daemon.payments.gate import Lane, PaymentGate
from node.daemon.payments.ledger import Ledger
from node.metering import Cost, Price
from node.wire import VOUCHER_HEADER, encode_voucher_header
from payment_fakes import FundedEscrow

CHAIN_ID, ESCROW = 31337, "0x" + "11" * 20
PRICE, MAX_COST = Price(1000, 1000), Cost(100, 100)
NODE = Account.from_key("0x" + "a1" * 32)
PAYERS = [Account.from_key("0x" + f"{0xB0 + i:02x}" * 32) for i in range(8)]
SIG = b"\x01" * 64 + b"\x1b"  # the ledger stores signatures, it does not check them


@pytest.fixture
def url(tmp_path) -> str:
    u = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(u)
    return u


def _gate(ledger: Ledger) -> PaymentGate:
    return PaymentGate(
        node_address=NODE.address, mode="voucher", escrow=FundedEscrow(), book=ledger, chain_id=CHAIN_ID, escrow_address=ESCROW
    )


def _v(adapter: int, c: int, a: int, payer=PAYERS[0]) -> SignedVoucher:
    return SignedVoucher(Voucher(payer.address, NODE.address, adapter, c, a), SIG)


def _headers(payer, adapter: int, c: int = 0, a: int = 0) -> dict:
    """A voucher equal to what a fresh lane owes (0, 0): not a prepayment, so admission writes it."""
    v = Voucher(payer.address, NODE.address, adapter, c, a)
    return {VOUCHER_HEADER: encode_voucher_header(SignedVoucher(v, sign_voucher(v, payer, CHAIN_ID, ESCROW)))}


def _count_commits(ledger: Ledger) -> list[int]:
    n = [0]
    event.listen(ledger.sessions.kw["bind"], "commit", lambda conn: n.__setitem__(0, n[0] + 1))
    return n


def _stored(url: str) -> dict[int, tuple[int, int]]:
    """adapter id -> (compute, adapter) of the committed voucher rows (a fresh engine: only what was committed)."""
    with make_session_factory(url)() as s:
        return {int(r.adapter_id): (int(r.compute_value), int(r.adapter_value)) for r in s.scalars(select(VoucherRow))}


def _values(ledger: Ledger, adapter: int, payer=PAYERS[0]) -> tuple[int, int] | None:
    sv = ledger.get(Lane(payer.address, NODE.address, adapter)).voucher
    return None if sv is None else (sv.voucher.compute_value, sv.voucher.adapter_value)


# ---- the ledger ----------------------------------------------------------------------------------


def test_a_group_is_taken_in_order_and_each_lane_ends_with_its_dominating_voucher(url):
    ledger = Ledger(make_session_factory(url))
    ledger.store_voucher(_v(5, 5, 5))  # stored before the group
    commits = _count_commits(ledger)
    group = [
        _v(1, 3, 3),
        _v(2, 1, 1),
        _v(1, 2, 2),  # below the one before it in this group: dropped (last-wins would store it)
        _v(3, 5, 1),
        _v(2, 4, 4),  # dominates the one before it: kept
        _v(3, 1, 5),  # neither dominates: the first stays
        _v(5, 4, 4),  # below the stored one: dropped
        _v(4, 0, 0),
    ]

    async def run():
        committer = GroupCommitter(ledger.store_vouchers)
        out = await asyncio.gather(*(committer.submit(sv) for sv in group))
        return out, committer.groups_written

    out, groups = asyncio.run(run())
    assert out == [None] * len(group)
    assert groups == 1 and commits[0] == 1  # every write of the group in one transaction
    want = {1: (3, 3), 2: (4, 4), 3: (5, 1), 4: (0, 0), 5: (5, 5)}
    assert _stored(url) == want
    assert {a: _values(ledger, a) for a in want} == want
    reloaded = Ledger(make_session_factory(url))
    assert {a: _values(reloaded, a) for a in want} == want
    assert {ln.adapter_id for ln, _ in reloaded.lanes_of(PAYERS[0].address, NODE.address)} == set(want)


def test_a_bad_voucher_in_a_group_fails_alone(url):
    """Another writer left lane 2's row above what this ledger knows: that voucher's write raises
    VoucherRegression (and its lane keeps the row), the rest of the group is committed."""
    ledger = Ledger(make_session_factory(url))
    Ledger(make_session_factory(url)).store_voucher(_v(2, 9, 9))
    assert _values(ledger, 2) is None  # stale: the row is not in this ledger's memory
    out = ledger.store_vouchers([_v(1, 1, 1), _v(2, 5, 5), _v(3, 2, 2), _v(1, 2, 2)])
    assert out[0] is None and out[2] is None and out[3] is None
    assert isinstance(out[1], VoucherRegression)
    assert _stored(url) == {1: (2, 2), 2: (9, 9), 3: (2, 2)}
    assert _values(ledger, 1) == (2, 2) and _values(ledger, 3) == (2, 2)
    assert _values(ledger, 2) is None  # the failed voucher did not move the ledger's view
    with pytest.raises(VoucherRegression):  # the single-voucher path raises it
        ledger.store_voucher(_v(2, 6, 6))


def test_a_group_with_nothing_to_store_opens_no_transaction(url):
    ledger = Ledger(make_session_factory(url))
    ledger.store_voucher(_v(1, 5, 5))
    commits = _count_commits(ledger)
    assert ledger.store_vouchers([_v(1, 5, 5), _v(1, 4, 4)]) == [None, None]
    assert commits[0] == 0 and _stored(url) == {1: (5, 5)}


# ---- the gate ------------------------------------------------------------------------------------


async def _warm(gate: PaymentGate) -> None:
    """Fill the escrow cache (one prepaid voucher per payer: not written)."""
    for p in PAYERS:
        (await gate.admit(_headers(p, 99, 1, 1), 99, PRICE, MAX_COST)).release()


async def test_concurrent_admissions_share_voucher_transactions_and_each_is_durable_on_return(url):
    ledger = Ledger(make_session_factory(url))
    gate = _gate(ledger)
    await _warm(gate)
    commits = _count_commits(ledger)
    crowd = [(p, a) for p in PAYERS for a in range(1, 5)]  # 32 lanes
    auths = await asyncio.gather(*(gate.admit(_headers(p, a), a, PRICE, MAX_COST) for p, a in crowd))

    assert gate._voucher_writes.groups_written <= 4 and commits[0] <= 4  # not one per admission
    with make_session_factory(url)() as s:
        rows = {(r.payer, int(r.adapter_id)) for r in s.scalars(select(VoucherRow))}
    assert rows == {(p.address.lower(), a) for p, a in crowd}
    for au in auths:
        au.release()
    assert gate.lock_count() == 0 and all(gate.reserved(p.address) == 0 for p in PAYERS)


async def test_an_admission_returns_only_after_its_voucher_committed(url, monkeypatch):
    ledger = Ledger(make_session_factory(url))
    gate = _gate(ledger)
    await _warm(gate)
    go = threading.Event()
    write = ledger.store_vouchers

    def slow(vouchers):
        go.wait(10)
        return write(vouchers)

    monkeypatch.setattr(ledger, "store_vouchers", slow)
    task = asyncio.create_task(gate.admit(_headers(PAYERS[0], 7), 7, PRICE, MAX_COST))
    await asyncio.sleep(0.2)
    assert not task.done()  # the write has not committed: the request is not admitted yet
    assert _stored(url) == {}
    go.set()
    (await asyncio.wait_for(task, 10)).release()
    assert _stored(url) == {7: (0, 0)}


async def test_a_failed_voucher_write_rejects_only_its_request_and_frees_its_lane(url):
    ledger = Ledger(make_session_factory(url))
    gate = _gate(ledger)
    await _warm(gate)
    bad = PAYERS[-1]
    with make_session_factory(url).begin() as s:  # a row this ledger does not know, above the voucher
        repo.store_voucher(
            s,
            lane=repo.lane_key(bad.address, NODE.address, 3),
            payer=bad.address,
            node=NODE.address,
            adapter_id=3,
            compute_value=9,
            adapter_value=9,
            signature="0x" + SIG.hex(),
        )
    crowd = [(p, 3) for p in PAYERS]
    out = await asyncio.gather(*(gate.admit(_headers(p, a), a, PRICE, MAX_COST) for p, a in crowd), return_exceptions=True)

    assert isinstance(out[-1], VoucherRegression)
    assert not any(isinstance(o, BaseException) for o in out[:-1])
    assert gate.reserved(bad.address) == 0  # the failed request's reservation was released
    assert gate.lock_count() == len(PAYERS) - 1  # its lane lock too; the admitted ones hold theirs
    for au in out[:-1]:
        au.release()
    assert gate.lock_count() == 0
    with make_session_factory(url)() as s:
        rows = {r.payer: (int(r.compute_value), int(r.adapter_value)) for r in s.scalars(select(VoucherRow))}
    assert rows == {p.address.lower(): (9, 9) if p is bad else (0, 0) for p in PAYERS}


def _admit_then_die(report, url: str) -> None:
    """The node process: its own engine and loop; reports once admitted, then dies by SIGKILL."""
    gate = _gate(Ledger(make_session_factory(url)))

    async def run():
        await _warm(gate)
        await gate.admit(_headers(PAYERS[1], 4), 4, PRICE, MAX_COST)

    asyncio.run(run())
    report("admitted")
    os.kill(os.getpid(), signal.SIGKILL)


def test_voucher_is_durable_once_admit_returned_even_if_the_process_is_killed(url):
    """A fresh interpreter admits a request (its voucher written by the group writer), reports,
    and dies by SIGKILL (no cleanup, no flush): the voucher row is there."""
    assert run_until_sigkilled(_admit_then_die, url) == ["admitted"]
    with make_session_factory(url)() as s:
        rows = [(r.payer, int(r.adapter_id)) for r in s.scalars(select(VoucherRow))]
    assert rows == [(PAYERS[1].address.lower(), 4)]

"""The payment gate recovers voucher signers off the event loop, concurrent requests' vouchers in
one worker-thread hop, and every check still holds: in a crowd of concurrent requests a forged
signature, a voucher signed by a stranger and a replay on a busy lane are each refused with their
own reason while the honest ones are admitted. Escrow reads missed by many requests together are
shared (one RPC call, one rate-limit token), and never across an invalidation (the gate against
real contracts: tests/integration/test_api_payments.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from eth_account import Account

from chain.eip712 import SignedVoucher, TypedDataError, Voucher, recover_digest_signer, sign_voucher, voucher_digest
from node.daemon.payments.errors import PaymentRejected
from node.daemon.payments.gate import PaymentGate
from node.daemon.payments.ledger import Ledger
from node.db import make_session_factory, migrate
from node.metering import Cost, Price
from node.wire import VOUCHER_HEADER, encode_voucher_header
from payment_fakes import FundedEscrow

CHAIN_ID, ESCROW = 31337, "0x" + "11" * 20
PRICE, MAX_COST = Price(1000, 1000), Cost(100, 100)
NODE = Account.create()
PAYERS = [Account.create() for _ in range(4)]


@pytest.fixture
def gate(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    return PaymentGate(
        node_address=NODE.address,
        mode="voucher",
        escrow=FundedEscrow(),
        book=Ledger(make_session_factory(url)),
        chain_id=CHAIN_ID,
        escrow_address=ESCROW,
    )


def _header(v: Voucher, sig: bytes) -> dict:
    return {VOUCHER_HEADER: encode_voucher_header(SignedVoucher(v, sig))}


def _signed(key, payer: str, adapter: int, c: int = 1, a: int = 1) -> dict:
    v = Voucher(payer, NODE.address, adapter, c, a)
    return _header(v, sign_voucher(v, key, CHAIN_ID, ESCROW))


def _unrecoverable(v: Voucher) -> bytes:
    """A well-formed signature (r, s in range, low s) whose r is no point's x: recovery fails."""
    digest = voucher_digest(v, CHAIN_ID, ESCROW)
    for r in range(1, 100):
        sig = r.to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b"
        try:
            recover_digest_signer(digest, sig)
        except TypedDataError:
            return sig
    raise AssertionError("no unrecoverable r below 100")


async def _outcome(gate: PaymentGate, headers: dict, adapter: int) -> str:
    try:
        await gate.admit(headers, adapter, PRICE, MAX_COST)
    except PaymentRejected as e:
        return e.code
    return "admitted"


async def test_concurrent_vouchers_are_recovered_together_off_the_loop_and_each_checked(gate, monkeypatch):
    threads: list[int] = []
    group = gate._recoveries.write_group

    def spy(vouchers):
        threads.append(threading.get_ident())
        return group(vouchers)

    monkeypatch.setattr(gate._recoveries, "write_group", spy)
    for p in PAYERS:  # warm the escrow cache: the crowd below must not spend chain reads
        (await gate.admit(_signed(p, p.address, 99), 99, PRICE, MAX_COST)).release()
    threads.clear()

    stranger = Account.create()
    forged_v = Voucher(PAYERS[0].address, NODE.address, 50, 1, 1)
    crowd: list[tuple[dict, int, str]] = [(_signed(p, p.address, 10 + i), 10 + i, "admitted") for i, p in enumerate(PAYERS * 8)]
    crowd += [
        (_header(forged_v, _unrecoverable(forged_v)), 50, "voucher_bad_signature"),
        (_signed(stranger, PAYERS[1].address, 51), 51, "voucher_signer_unauthorized"),
    ]
    outcomes = await asyncio.gather(*(_outcome(gate, h, adapter) for h, adapter, _ in crowd))

    assert outcomes == [want for _, _, want in crowd]
    assert threads and threading.get_ident() not in threads  # recovered in a worker thread
    assert len(threads) < len(crowd) // 4  # in groups, not one hop per voucher


async def test_a_replay_racing_on_a_busy_lane_is_refused_after_the_recovery_wait(gate):
    """The lane lock is taken after the recovery: the first request's reservation and the lane's
    ledger decide the second exactly as before (voucher values above owed + max_cost are refused)."""
    p = PAYERS[0]
    first = await gate.admit(_signed(p, p.address, 7, 100, 100), 7, PRICE, MAX_COST)
    second = asyncio.create_task(_outcome(gate, _signed(p, p.address, 7, 100, 100), 7))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the lane
    assert gate.reserved(p.address) == MAX_COST.total
    first.release()
    assert await second == "admitted"  # nothing was served: owed is still 0, the prepayment is still in range
    assert gate.lock_count() == 1 and gate.reserved(p.address) == MAX_COST.total


class _SlowEscrow(FundedEscrow):
    """Escrow reads that take a while (an RPC round trip) and are counted; `balance` is what the
    chain says now."""

    def __init__(self) -> None:
        self.reads = 0
        self.balance = 10**18
        self.release = threading.Event()

    def available(self, payer: str, node: str) -> int:
        self.reads += 1
        balance = self.balance
        self.release.wait(5)
        return balance


async def _until(cond, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _slow_gate(tmp_path, escrow: _SlowEscrow, burst: int) -> PaymentGate:
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    migrate(url)
    return PaymentGate(
        node_address=NODE.address,
        mode="voucher",
        escrow=escrow,
        book=Ledger(make_session_factory(url)),
        chain_id=CHAIN_ID,
        escrow_address=ESCROW,
        chain_read_burst=burst,
        chain_reads_per_s=0.001,
    )


async def test_a_crowd_of_one_payers_requests_on_a_cold_cache_shares_one_chain_read(tmp_path):
    """One payer streaming on many lanes when its balance entry expires: one read, not one per
    request (which spent the read budget and answered honest requests 503)."""
    escrow = _SlowEscrow()
    gate = _slow_gate(tmp_path, escrow, burst=8)
    p = PAYERS[0]
    crowd = [asyncio.create_task(_outcome(gate, _signed(p, p.address, 10 + i), 10 + i)) for i in range(32)]
    await asyncio.sleep(0.2)
    escrow.release.set()
    assert await asyncio.gather(*crowd) == ["admitted"] * 32
    assert escrow.reads == 1


async def test_a_request_after_an_invalidation_does_not_ride_on_an_older_read(tmp_path):
    """A Withdrawn event lands while a balance read is in flight: requests after it read again and
    see the new balance; the older read's value is not cached."""
    escrow = _SlowEscrow()
    gate = _slow_gate(tmp_path, escrow, burst=8)
    p = PAYERS[0]
    before = asyncio.create_task(_outcome(gate, _signed(p, p.address, 1), 1))
    await _until(lambda: escrow.reads == 1)
    escrow.balance = 0  # withdrawn on chain; the follower invalidates
    gate.invalidate(p.address)
    after = asyncio.create_task(_outcome(gate, _signed(p, p.address, 2), 2))
    await _until(lambda: escrow.reads == 2)
    escrow.release.set()
    assert await before == "admitted"  # admitted on what the chain said when it asked
    assert await after == "escrow_insufficient"
    assert escrow.reads == 2
    assert await _outcome(gate, _signed(p, p.address, 3), 3) == "escrow_insufficient"  # not the stale value
    assert escrow.reads == 2


async def test_a_flood_of_fresh_payers_does_not_starve_a_known_payer_whose_cache_expired(tmp_path):
    """Attack: a bystander floods the node with vouchers from fresh keys, each a cache miss, and
    spends the chain-read budget. A payer the node already read keeps being served on its last
    known balance when its entry expires (as while the RPC is down; escrow events still drop it),
    and only keys with no known value get the 503."""
    escrow = _SlowEscrow()
    escrow.release.set()
    gate = _slow_gate(tmp_path, escrow, burst=2)
    gate._balance_cache.ttl_s = 0.0  # every entry has expired by the next request
    p = PAYERS[0]
    assert await _outcome(gate, _signed(p, p.address, 1), 1) == "admitted"  # one read: its balance is known
    flood = [Account.create() for _ in range(8)]
    outcomes = [await _outcome_or_503(gate, _signed(k, k.address, 2), 2) for k in flood]
    assert outcomes.count("503") >= 7  # the budget is spent on the flood
    assert await _outcome_or_503(gate, _signed(p, p.address, 3), 3) == "admitted"
    gate.invalidate(p.address)  # an escrow event: the last value goes, a fresh read is needed
    assert await _outcome_or_503(gate, _signed(p, p.address, 4), 4) == "503"


async def _outcome_or_503(gate: PaymentGate, headers: dict, adapter: int) -> str:
    from node.daemon.payments.errors import PaymentCheckUnavailable

    try:
        return await _outcome(gate, headers, adapter)
    except PaymentCheckUnavailable:
        return "503"

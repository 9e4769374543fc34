"""chain.outbox against a real anvil: exactly-once sending through crashes, stuck fees and reverts.

The durable store is the node's `SqlOutboxStore`, tested on SQLite and on the machine's Postgres;
the store rules also run against `InMemoryOutboxStore`. Crashes are real (a child process using the
SQL store SIGKILLs itself mid-send) or simulated by raising a BaseException from inside the outbox
at the named point; either way a new Outbox on a new DB engine (a new process) takes over. Mempool
loss is real (`anvil_dropTransaction`), stuck transactions are real (automine off).
"""

from __future__ import annotations

import collections
import os
import random
import signal

import pytest
import requests
from crash import run_until_sigkilled
from eth_abi import encode as abi_encode
from eth_account import Account
from web3.exceptions import ContractLogicError
from web3 import Web3
from web3.exceptions import TransactionNotFound

from chain.artifacts import load_artifact
from chain.devchain import DEV_PRIVATE_KEYS, Anvil
from chain.outbox import (
    Attempt,
    InMemoryOutboxStore,
    IntentStatus,
    Outbox,
    OutboxError,
    decode_revert_data,
)
from chain.reverts import as_revert, revert_data
from node.db import make_engine, make_session_factory, migrate
from node.db.outbox_store import SqlOutboxStore

KEY = DEV_PRIVATE_KEYS[3]
ACCOUNT = Account.from_key(KEY)


class SimulatedCrash(BaseException):
    """Stands in for the process dying: not an Exception, so no handler in the outbox catches it."""


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class CrashBeforeSend(Outbox):
    def _broadcast(self, row, att, report):
        raise SimulatedCrash


def w3_of(chain) -> Web3:
    return Web3(Web3.HTTPProvider(chain.url))


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request, tmp_path):
    """A migrated node DB: SQLite in tmp_path, or a private schema of the machine's Postgres."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    return url


@pytest.fixture
def open_sql_store(sql_url):
    """Opens a SqlOutboxStore on the test's DB with an engine of its own, as a restarted process
    would; opening one closes the connections of those opened before (their process is gone)."""
    engines = []

    def open_store(**kw) -> SqlOutboxStore:
        for e in engines:
            e.dispose()
        engines.append(make_engine(sql_url))
        return SqlOutboxStore(make_session_factory(engines[-1]), **kw)

    yield open_store
    for e in engines:
        e.dispose()


def transfer(i: int) -> dict:
    """A value transfer to a fresh address: its balance afterwards counts how often it was mined."""
    return {"to": Account.from_key((1000 + i).to_bytes(32, "big")).address, "value": 1_000 + i}


def recipient_balances(w3: Web3, n: int) -> list[int]:
    return [w3.eth.get_balance(transfer(i)["to"]) for i in range(n)]


def assert_sent_exactly_once(w3: Web3, outbox: Outbox, ids: list[int], start_nonce: int = 0) -> None:
    rows = [outbox.get(i) for i in ids]
    assert all(r.status == IntentStatus.MINED for r in rows), [(r.id, r.status, r.error) for r in rows]
    assert sorted(r.nonce for r in rows) == list(range(start_nonce, start_nonce + len(ids)))  # contiguous
    assert w3.eth.get_transaction_count(outbox.sender) == start_nonce + len(ids)  # no stray tx
    for r in rows:
        rcpt = w3.eth.get_transaction_receipt(r.tx_hash)
        assert rcpt["status"] == 1 and rcpt["blockNumber"] == r.block_number
        assert r.tx_hash in {a.tx_hash for a in r.attempts}


def deploy_token(outbox: Outbox) -> object:
    art = load_artifact("DemoToken")
    data = art.bytecode + abi_encode(["address"], [outbox.sender]).hex()
    (row,) = outbox.run_until_idle(ids=[outbox.enqueue("deploy-token", {"data": data})], timeout=30)
    addr = outbox.w3.eth.get_transaction_receipt(row.tx_hash)["contractAddress"]
    return outbox.w3.eth.contract(address=addr, abi=art.abi_list)


def token_revert_name(data: bytes) -> str | None:
    # the ERC20 errors of the DemoToken, decoded from its ABI (as the node passes its decoder)
    from eth_utils import function_abi_to_4byte_selector

    for e in load_artifact("DemoToken").abi:
        if e["type"] == "error" and function_abi_to_4byte_selector(e) == data[:4]:
            return e["name"]
    return None


# --- happy path, idempotence, validation ---------------------------------------------------


@pytest.fixture(scope="module")
def _outbox_chain():
    """A chain of this module's own: its tests count nonces from 0, and other modules deploy on the
    shared session chain outside snapshots (their nonces would leak in here)."""
    with Anvil() as node:
        yield node


@pytest.fixture
def anvil(_outbox_chain):
    snap = _outbox_chain.rpc("evm_snapshot")
    yield _outbox_chain
    _outbox_chain.rpc("evm_revert", [snap])


def test_sends_each_intent_once_with_contiguous_nonces(anvil):
    w3 = w3_of(anvil)
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore(), 31337)
    ids = [ob.enqueue(f"pay-{i}", transfer(i)) for i in range(5)]
    assert ob.enqueue("pay-2", transfer(99)) == ids[2]  # duplicate key: no-op, same id
    ob.run_until_idle(timeout=30)
    assert_sent_exactly_once(w3, ob, ids)
    assert recipient_balances(w3, 5) == [1_000 + i for i in range(5)]
    assert ob.enqueue("pay-2", transfer(2)) == ids[2]  # still a no-op once mined
    assert ob.process().idle


def test_contract_creation_and_calls(anvil):
    w3 = w3_of(anvil)
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore())
    token = deploy_token(ob)
    mint = {"to": token.address, "data": token.encode_abi("mint", args=[ACCOUNT.address, 500])}
    ob.run_until_idle(ids=[ob.enqueue("mint", mint)], timeout=30)
    assert token.functions.balanceOf(ACCOUNT.address).call() == 500
    # contract-wrapper shaped params ({from, to, data, value, chainId}) are accepted
    built = {**mint, "from": ACCOUNT.address, "value": 0, "chainId": 31337, "nonce": 12345, "maxFeePerGas": 1}
    (row,) = ob.run_until_idle(ids=[ob.enqueue("mint-2", built)], timeout=30)
    assert row.nonce == 2  # the outbox owns nonces and fees: the caller's are ignored
    assert token.functions.balanceOf(ACCOUNT.address).call() == 1000


@pytest.mark.parametrize(
    "key, params, msg",
    [
        ("", transfer(0), "key"),
        ("k" * 201, transfer(0), "key"),
        ("k", {"to": "0x1234", "value": 1}, "'to' must be an address"),
        ("k", {**transfer(0), "from": Account.from_key(DEV_PRIVATE_KEYS[4]).address}, "not the outbox account"),
        ("k", {**transfer(0), "chainId": 1}, "chainId"),
        ("k", {**transfer(0), "value": -1}, "non-negative int"),
        ("k", {**transfer(0), "gas": 1.5}, "non-negative int"),
        ("k", {**transfer(0), "data": "0xzz"}, "not hex"),
        ("k", {**transfer(0), "data": b"\x00" * 200_000}, "more than"),
        ("k", {**transfer(0), "accessList": []}, "unsupported"),
        ("k", {"value": 1}, "contract creation needs data"),
        ("k", [("to", "x")], "mapping"),
    ],
)
def test_enqueue_rejects_bad_input(anvil, key, params, msg):
    ob = Outbox(w3_of(anvil), ACCOUNT, InMemoryOutboxStore())
    with pytest.raises(OutboxError, match=msg):
        ob.enqueue(key, params)


def test_constructor_checks(anvil):
    w3 = w3_of(anvil)
    with pytest.raises(OutboxError, match="chain 31337"):
        Outbox(w3, ACCOUNT, InMemoryOutboxStore(), chain_id=1)
    with pytest.raises(OutboxError, match="bump_factor"):
        Outbox(w3, ACCOUNT, InMemoryOutboxStore(), bump_factor=1.05)
    with pytest.raises(OutboxError, match="LocalAccount"):
        Outbox(w3, KEY, InMemoryOutboxStore())


# --- reverts -------------------------------------------------------------------------------


def test_reverting_intents_fail_with_the_reason(anvil):
    w3 = w3_of(anvil)
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore(), error_decoder=token_revert_name)
    token = deploy_token(ob)  # nonce 0
    too_much = {"to": token.address, "data": token.encode_abi("transfer", args=[ACCOUNT.address, 10**30])}
    refused = ob.enqueue("refused", too_much)  # gas estimate reverts: failed before signing
    mined_revert = ob.enqueue("mined-revert", {**too_much, "gas": 100_000})  # fixed gas: reverts on chain
    ok = ob.enqueue("ok", transfer(0))
    rows = ob.run_until_idle(ids=[refused, mined_revert, ok], timeout=30)
    assert rows[0].status == IntentStatus.FAILED and rows[0].nonce is None and not rows[0].attempts
    assert rows[0].error == "ERC20InsufficientBalance"
    assert rows[1].status == IntentStatus.FAILED and rows[1].nonce == 1
    assert rows[1].error == "ERC20InsufficientBalance"
    assert w3.eth.get_transaction_receipt(rows[1].tx_hash)["status"] == 0
    assert rows[2].status == IntentStatus.MINED and rows[2].nonce == 2  # no gap left by the refused one


def test_decode_revert_data_fallbacks():
    assert decode_revert_data(bytes.fromhex("08c379a0") + abi_encode(["string"], ["nope"])) == "Error('nope')"
    assert decode_revert_data(bytes.fromhex("4e487b71") + (0x11).to_bytes(32, "big")) == "Panic(0x11)"
    assert decode_revert_data(b"") == "reverted without data"
    assert decode_revert_data(bytes.fromhex("deadbeef01")) == "custom error 0xdeadbeef data 0x01"
    assert decode_revert_data(b"\x01\x02\x03\x04", lambda d: 1 / 0) == "custom error 0x01020304"


def test_revert_data_from_provider_errors():
    """The one rule (chain.reverts.revert_data) the outbox and the contract bindings read revert bytes by."""
    assert revert_data("0x08c379a0") == bytes.fromhex("08c379a0")
    assert revert_data({"data": "0xdeadbeef", "message": "execution reverted"}) == bytes.fromhex("deadbeef")
    assert revert_data(b"\x01") == b"\x01"
    assert revert_data("0xnot-hex") is None  # a broken provider's text: no data, not a crash
    assert revert_data("execution reverted") is None
    assert revert_data(None) is None
    assert as_revert(ContractLogicError("execution reverted", data="0xzz")).name == "Unknown"


# --- crashes, stuck transactions, mempool loss ----------------------------------------------


def test_crash_between_signing_and_broadcast_rebroadcasts_same_bytes(anvil, open_sql_store):
    w3 = w3_of(anvil)
    crashing = CrashBeforeSend(w3, ACCOUNT, open_sql_store())
    ids = [crashing.enqueue(f"pay-{i}", transfer(i)) for i in range(3)]
    with pytest.raises(SimulatedCrash):
        crashing.process()
    signed = crashing.get(ids[0])
    assert signed.status == IntentStatus.SIGNED and signed.nonce == 0
    assert w3.eth.get_transaction_count(ACCOUNT.address, "pending") == 0  # nothing left the process

    restarted = Outbox(w3, ACCOUNT, open_sql_store())  # a new process on the same DB
    restarted.run_until_idle(timeout=30)
    assert_sent_exactly_once(w3, restarted, ids)
    assert restarted.get(ids[0]).tx_hash == signed.attempts[0].tx_hash  # the very bytes signed before
    assert recipient_balances(w3, 3) == [1_000, 1_001, 1_002]


def test_crash_between_broadcast_and_mining(fresh_anvil, open_sql_store):
    w3 = w3_of(fresh_anvil)
    fresh_anvil.rpc("evm_setAutomine", [False])
    first = Outbox(w3, ACCOUNT, open_sql_store())
    ids = [first.enqueue(f"pay-{i}", transfer(i)) for i in range(4)]
    first.process()
    sent = [first.get(i) for i in ids]
    assert all(r.status == IntentStatus.SENT for r in sent)
    # the process dies, and the node's pool loses half of the transactions too
    for r in sent[::2]:
        fresh_anvil.rpc("anvil_dropTransaction", ["0x" + r.attempts[-1].tx_hash.hex()])
    del first

    second = Outbox(w3, ACCOUNT, open_sql_store())
    report = second.process()
    assert sorted(report.broadcast) == ids  # every open tx rebroadcast once after the restart
    fresh_anvil.rpc("evm_mine")
    second.run_until_idle(timeout=30)
    assert_sent_exactly_once(w3, second, ids)
    assert [second.get(i).tx_hash for i in ids] == [r.attempts[-1].tx_hash for r in sent]
    assert recipient_balances(w3, 4) == [1_000 + i for i in range(4)]


def test_stuck_transaction_is_replaced_with_higher_fees(fresh_anvil):
    w3 = w3_of(fresh_anvil)
    fresh_anvil.rpc("evm_setAutomine", [False])
    clock = Clock()
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore(), stuck_after=30, clock=clock)
    ids = [ob.enqueue(f"pay-{i}", transfer(i)) for i in range(2)]
    ob.process()
    clock.t += 10
    assert ob.process().bumped == []  # not stuck yet
    clock.t += 25
    assert sorted(ob.process().bumped) == ids
    for i in ids:
        first, second = ob.get(i).attempts
        assert second.max_priority_fee_per_gas >= first.max_priority_fee_per_gas * 1.125
        assert second.max_fee_per_gas >= first.max_fee_per_gas * 1.125
        assert second.tx_hash != first.tx_hash
    clock.t += 1
    assert ob.process().bumped == []  # the replacement's own timer starts now
    fresh_anvil.rpc("evm_mine")
    ob.run_until_idle(timeout=30)
    assert_sent_exactly_once(w3, ob, ids)
    for i in ids:
        row = ob.get(i)
        assert row.tx_hash == row.attempts[1].tx_hash  # the replacement was mined, not the original
        with pytest.raises(TransactionNotFound):
            w3.eth.get_transaction_receipt(row.attempts[0].tx_hash)
    assert recipient_balances(w3, 2) == [1_000, 1_001]


def test_fee_cap_stops_bumping(fresh_anvil):
    w3 = w3_of(fresh_anvil)
    fresh_anvil.rpc("evm_setAutomine", [False])
    clock = Clock()
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore(), stuck_after=1, clock=clock)
    i = ob.enqueue("pay", transfer(0))
    ob.process()
    ob.max_fee_cap = ob.get(i).attempts[0].max_fee_per_gas  # no room for a +12.5 % replacement
    clock.t += 5
    assert ob.process().bumped == []
    assert "cap" in ob.get(i).error and len(ob.get(i).attempts) == 1


def test_unfunded_account_waits_until_funded(anvil):
    w3 = w3_of(anvil)
    poor = Account.from_key(b"\x42" * 32)
    ob = Outbox(w3, poor, InMemoryOutboxStore())
    i = ob.enqueue("pay", transfer(0))
    ob.process()  # anvil's estimate passes; the pool refuses the signed tx
    row = ob.get(i)
    assert row.status == IntentStatus.SIGNED and row.nonce == 0 and "insufficient funds" in row.error.lower()
    ob.process()  # retried each pass, never re-signed
    assert len(ob.get(i).attempts) == 1
    anvil.rpc("anvil_setBalance", [poor.address, hex(10**18)])
    (mined,) = ob.run_until_idle(ids=[i], timeout=30)
    assert mined.status == IntentStatus.MINED and mined.tx_hash == row.attempts[0].tx_hash


def test_broadcast_failure_keeps_the_signed_bytes_for_the_next_pass(anvil, monkeypatch):
    import requests

    w3 = w3_of(anvil)
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore())
    real_send = w3.eth.send_raw_transaction

    def rpc_down(raw):  # a test double only for the transport: the RPC is unreachable once
        raise requests.ConnectionError("connection refused")

    monkeypatch.setattr(w3.eth, "send_raw_transaction", rpc_down)
    i = ob.enqueue("pay", transfer(0))
    ob.process()
    row = ob.get(i)
    assert row.status == IntentStatus.SIGNED and "connection refused" in row.error
    monkeypatch.setattr(w3.eth, "send_raw_transaction", real_send)
    (mined,) = ob.run_until_idle(ids=[i], timeout=30)
    assert mined.status == IntentStatus.MINED and mined.tx_hash == row.attempts[0].tx_hash
    assert len(mined.attempts) == 1


def test_confirmations_hold_a_mined_tx_without_bumping(anvil):
    w3 = w3_of(anvil)
    clock = Clock()
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore(), confirmations=2, stuck_after=1, clock=clock)
    i = ob.enqueue("pay", transfer(0))
    ob.process()  # automine: mined at once, but not 2 blocks deep
    clock.t += 100
    for _ in range(2):
        report = ob.process()
        assert report.bumped == [] and report.broadcast == [] and ob.get(i).status == IntentStatus.SENT
    anvil.rpc("anvil_mine", [2])
    assert ob.process().mined == [i]
    assert_sent_exactly_once(w3, ob, [i])


def test_nonce_taken_outside_the_outbox_fails_the_intent_and_is_never_reused(anvil, open_sql_store):
    w3 = w3_of(anvil)
    crashing = CrashBeforeSend(w3, ACCOUNT, open_sql_store())
    a = crashing.enqueue("a", transfer(0))
    with pytest.raises(SimulatedCrash):
        crashing.process()
    assert crashing.get(a).nonce == 0
    # someone else spends nonce 0 of the same account before the outbox comes back
    stray = ACCOUNT.sign_transaction(
        {
            "to": ACCOUNT.address,
            "value": 1,
            "gas": 21000,
            "nonce": 0,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "chainId": 31337,
        }
    )
    w3.eth.send_raw_transaction(stray.raw_transaction)
    restarted = Outbox(w3, ACCOUNT, open_sql_store())
    b = restarted.enqueue("b", transfer(1))
    restarted.run_until_idle(timeout=30)
    assert restarted.get(a).status == IntentStatus.FAILED and "consumed" in restarted.get(a).error
    assert restarted.get(b).status == IntentStatus.MINED and restarted.get(b).nonce == 1
    assert recipient_balances(w3, 2) == [0, 1_001]


def test_dependent_intent_waits_for_its_predecessor(fresh_anvil):
    w3 = w3_of(fresh_anvil)
    ob = Outbox(w3, ACCOUNT, InMemoryOutboxStore(), error_decoder=token_revert_name)
    token = deploy_token(ob)
    fresh_anvil.rpc("evm_setAutomine", [False])
    dest = transfer(0)["to"]
    mint = ob.enqueue("mint", {"to": token.address, "data": token.encode_abi("mint", args=[ACCOUNT.address, 7])})
    spend = ob.enqueue("spend", {"to": token.address, "data": token.encode_abi("transfer", args=[dest, 7])})
    report = ob.process()
    assert report.signed == [mint] and report.deferred == [spend]  # its estimate reverts until mint is mined
    assert ob.get(spend).nonce is None
    fresh_anvil.rpc("evm_mine")
    ob.process()
    fresh_anvil.rpc("evm_mine")
    ob.run_until_idle(timeout=30)
    assert ob.get(spend).status == IntentStatus.MINED and ob.get(spend).nonce == 2
    assert token.functions.balanceOf(dest).call() == 7


def test_random_crashes_drops_and_stalls_still_send_each_intent_once(fresh_anvil, open_sql_store):
    """A seeded random schedule of process / crash+restart / pool loss / mining / time passing."""
    w3 = w3_of(fresh_anvil)
    fresh_anvil.rpc("evm_setAutomine", [False])
    rng = random.Random(7)
    clock = Clock()

    def open_outbox(cls=Outbox):
        return cls(w3, ACCOUNT, open_sql_store(), stuck_after=20, clock=clock)

    ob = open_outbox()
    n, ids = 12, []
    seen = collections.Counter()
    for _ in range(60):
        if len(ids) < n and rng.random() < 0.5:
            ids.append(ob.enqueue(f"pay-{len(ids)}", transfer(len(ids))))
        action = rng.choice(["process", "process", "crash", "crash-before-send", "drop", "mine", "wait"])
        seen[action] += 1
        if action == "process":
            ob.process()
        elif action == "crash":
            ob = open_outbox()
        elif action == "crash-before-send":
            try:
                open_outbox(CrashBeforeSend).process()
            except SimulatedCrash:
                seen["crashed-after-signing"] += 1
            ob = open_outbox()
        elif action == "drop":
            pending = fresh_anvil.rpc("txpool_content")["pending"].get(ACCOUNT.address.lower(), {})
            for tx in pending.values():
                if rng.random() < 0.5:
                    fresh_anvil.rpc("anvil_dropTransaction", [tx["hash"]])
                    seen["dropped"] += 1
        elif action == "mine":
            fresh_anvil.rpc("evm_mine")
        else:
            clock.t += 25
    while len(ids) < n:
        ids.append(ob.enqueue(f"pay-{len(ids)}", transfer(len(ids))))
    fresh_anvil.rpc("evm_setAutomine", [True])
    ob = open_outbox()
    ob.run_until_idle(timeout=60)
    assert_sent_exactly_once(w3, ob, ids)
    assert recipient_balances(w3, n) == [1_000 + i for i in range(n)]
    # the schedule really exercised every failure (the seed is fixed, so this is deterministic)
    seen["replaced"] = sum(len(ob.get(i).attempts) > 1 for i in ids)
    assert all(seen[k] for k in ("crashed-after-signing", "dropped", "mine", "wait", "replaced")), seen


# --- the stores ----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sql-sqlite", "sql-postgres"])
def store(request, tmp_path):
    """Each store the outbox runs on: the in-memory reference and the node's SQL store on both DBs."""
    if request.param == "memory":
        return InMemoryOutboxStore()
    url = request.getfixturevalue("pg_url") if request.param == "sql-postgres" else f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    engine = make_engine(url)
    request.addfinalizer(engine.dispose)
    return SqlOutboxStore(make_session_factory(engine))


def att(n: int) -> Attempt:
    return Attempt(bytes([n]) * 32, b"\x02raw" + bytes([n]), 10 + n, 1 + n, 0.0)


PARAMS = {"to": None, "data": "0x00", "value": 0, "gas": None}


def test_store_rules(store):
    a, created = store.add("a", "0xS", {"to": None, "data": "0x00", "value": 0, "gas": None}, 1.0)
    assert created and store.add("a", "0xS", {}, 2.0) == (a, False)
    b, _ = store.add("b", "0xS", {"to": None, "data": "0x01", "value": 0, "gas": None}, 1.0)
    c, _ = store.add("c", "0xOther", {"to": None, "data": "0x01", "value": 0, "gas": None}, 1.0)
    store.record_signed(a, 0, att(1))
    with pytest.raises(OutboxError, match="^nonce 0 of 0xS is already assigned$"):
        store.record_signed(b, 0, att(2))  # a nonce is never handed out twice
    store.record_signed(c, 0, att(3))  # another sender has its own nonces
    with pytest.raises(OutboxError, match=f"^intent {a} holds nonce 0; a replacement must reuse it, not 1$"):
        store.record_signed(a, 1, att(4))
    store.record_signed(a, 0, att(5))  # replacement: same nonce
    store.mark_sent(a, 5.0)
    store.mark_sent(a, 9.0)
    row = store.get(a)
    assert row.status == IntentStatus.SENT and row.sent_at == 5.0
    assert [x.tx_hash for x in row.attempts] == [att(1).tx_hash, att(5).tx_hash]
    assert store.highest_nonce("0xS") == 0 and store.highest_nonce("nobody") is None
    assert [r.id for r in store.open_intents("0xS")] == [a, b]
    store.finish(a, IntentStatus.MINED, tx_hash=att(5).tx_hash, block_number=3, gas_used=21000)
    with pytest.raises(OutboxError, match=f"^intent {a} is mined; it cannot be signed again$"):
        store.record_signed(a, 0, att(6))
    assert [r.id for r in store.open_intents("0xS")] == [b]
    assert store.get_by_key("a").tx_hash == att(5).tx_hash and store.get(999) is None
    assert [r.id for r in store.finished_from_nonce("0xS", 0)] == [a] and store.finished_from_nonce("0xS", 1) == []


def test_store_finished_intents_are_final(store):
    a, _ = store.add("a", "0xS", PARAMS, 1.0)
    store.record_signed(a, 0, att(1))
    with pytest.raises(OutboxError, match="^an intent finishes as mined or failed, not 'sent'$"):
        store.finish(a, "sent")
    store.finish(a, IntentStatus.FAILED, tx_hash=att(1).tx_hash, block_number=2, gas_used=30000, error="Reverted")
    with pytest.raises(OutboxError, match=f"^intent {a} is failed; it cannot be finished again$"):
        store.finish(a, IntentStatus.MINED, tx_hash=att(1).tx_hash, block_number=2, gas_used=30000)
    with pytest.raises(OutboxError, match=f"^intent {a} is failed; it cannot be marked sent$"):
        store.mark_sent(a, 3.0)
    store.note_error(a, "noted")  # a note never changes the status
    row = store.get(a)
    assert (row.status, row.tx_hash, row.block_number, row.gas_used, row.error) == (
        IntentStatus.FAILED,
        att(1).tx_hash,
        2,
        30000,
        "noted",
    )


def test_store_refuses_unknown_intents(store):
    calls = [
        lambda: store.record_signed(7, 0, att(1)),
        lambda: store.mark_sent(7, 1.0),
        lambda: store.note_error(7, "x"),
        lambda: store.finish(7, IntentStatus.MINED),
    ]
    for call in calls:
        with pytest.raises(OutboxError, match="^no intent 7$"):
            call()
    assert store.get(7) is None and store.highest_nonce("0xS") is None


def test_sql_store_survives_reopen(open_sql_store):
    signed = Attempt(b"\x01" * 32, b"raw", 2**200, 2**199, 3.0)
    s1 = open_sql_store()
    i, _ = s1.add("k", "0xS", {"to": None, "data": "0x00", "value": 2**200, "gas": None}, 1.0)
    s1.record_signed(i, 7, signed)
    row = open_sql_store().get(i)
    assert row.nonce == 7 and row.attempts == (signed,) and row.status == IntentStatus.SIGNED
    assert row.params["value"] == 2**200


def test_sql_store_reports_its_crash_points_after_each_write(open_sql_store):
    steps = []
    store = open_sql_store(on_step=lambda name, i: steps.append((name, i, store.get(i).status)))
    a, _ = store.add("a", "0xS", PARAMS, 1.0)
    store.record_signed(a, 0, att(1))
    store.mark_sent(a, 2.0)
    store.finish(a, IntentStatus.MINED, tx_hash=att(1).tx_hash, block_number=3, gas_used=21000)
    # each hook runs where a crash loses the most: the step before it durable, its own not yet
    assert steps == [("signed", a, IntentStatus.SIGNED), ("broadcast", a, IntentStatus.SIGNED), ("mined", a, IntentStatus.SENT)]


KILL_POINTS = ["signed", "broadcast", "mined"]  # SqlOutboxStore's on_step names
SENT_BY_DEAD = {"signed": 0, "broadcast": 1, "mined": 2}  # transactions out when the process dies there


def _send_until_killed(_report, db_url: str, rpc_url: str, keys: list[tuple[str, int]], point: str) -> None:
    """The node process (a fresh interpreter, see crash.py): enqueue, send, and SIGKILL itself at `point`."""

    def die_at(name: str, _intent_id: int) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    # its own HTTP session and DB engine: no socket shared with the parent
    w3 = Web3(Web3.HTTPProvider(rpc_url, session=requests.Session()))
    ob = Outbox(w3, ACCOUNT, SqlOutboxStore(make_session_factory(db_url), on_step=die_at))
    for key, i in keys:
        ob.enqueue(key, transfer(i))
    ob.run_until_idle(timeout=30)


def test_sigkill_mid_send_then_restart_sends_each_intent_once(anvil, sql_url, open_sql_store):
    """A real node process on the SQL store dies by SIGKILL after signing, after broadcasting and
    after mining (each before the store records the next step); a restarted outbox replays from the
    DB: every intent the dead process enqueued is there, and each is mined once, from the bytes
    signed before the crash."""
    w3 = w3_of(anvil)
    ids: list[int] = []
    for rnd, point in enumerate(KILL_POINTS):
        keys = [(f"r{rnd}-{j}", 2 * rnd + j) for j in range(2)]
        run_until_sigkilled(_send_until_killed, sql_url, anvil.url, keys, point, what=point)  # the node process

        store = open_sql_store()
        before = [store.get_by_key(key) for key, _ in keys]
        assert all(r is not None for r in before), f"{point}: an enqueued intent was lost"
        assert before[0].attempts, f"{point}: died before signing"
        # where it died: signed and stored but unsent / sent but not recorded / both mined, one recorded
        assert w3.eth.get_transaction_count(ACCOUNT.address, "pending") - before[0].nonce == SENT_BY_DEAD[point]
        assert before[0].status == (IntentStatus.SIGNED if point != "mined" else IntentStatus.SENT)
        restarted = Outbox(w3, ACCOUNT, store)
        restarted.run_until_idle(timeout=30)
        for old in before:
            new = restarted.get(old.id)
            assert new.status == IntentStatus.MINED, (point, new)
            if old.attempts:  # the very bytes signed before the crash, not a second signature
                assert new.tx_hash == old.attempts[-1].tx_hash and new.attempts == old.attempts
        ids += [r.id for r in before]
    assert_sent_exactly_once(w3, restarted, ids)  # contiguous nonces from 0, no stray transaction
    n = 2 * len(KILL_POINTS)
    assert recipient_balances(w3, n) == [1_000 + i for i in range(n)]


def test_reorg_deeper_than_confirmations_replays_dropped_transactions(fresh_anvil, store):
    """Intents marked mined (confirmations = 1) whose blocks a 4-block reorg replaces: the chain nonce
    falls back, the outbox rebroadcasts the dropped bytes, and a new intent is not stuck behind a gap."""
    w3 = w3_of(fresh_anvil)
    ob = Outbox(w3, ACCOUNT, store, 31337, confirmations=1)
    ids = [ob.enqueue(f"pay-{i}", transfer(i)) for i in range(3)]
    for _ in range(20):
        ob.process()
        fresh_anvil.rpc("evm_mine")
        if all(ob.get(i).status == IntentStatus.MINED for i in ids):
            break
    assert all(ob.get(i).status == IntentStatus.MINED for i in ids)
    depth = w3.eth.block_number - min(ob.get(i).block_number for i in ids) + 1
    fresh_anvil.rpc("anvil_reorg", [depth, []])  # deeper than confirmations: the three txs are gone
    assert w3.eth.get_transaction_count(ACCOUNT.address) == 0 and recipient_balances(w3, 3) == [0, 0, 0]
    new = ob.enqueue("pay-3", transfer(3))
    for _ in range(20):
        ob.process()
        fresh_anvil.rpc("evm_mine")
        if ob.get(new).status == IntentStatus.MINED and w3.eth.get_transaction_count(ACCOUNT.address) == 4:
            break
    assert ob.get(new).status == IntentStatus.MINED and ob.get(new).nonce == 3
    assert w3.eth.get_transaction_count(ACCOUNT.address) == 4  # the dropped three, replayed once each
    assert recipient_balances(w3, 4) == [1_000, 1_001, 1_002, 1_003]

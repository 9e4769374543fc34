"""The payment gate against real contracts on anvil and a real SQLite ledger (node.db migrations):
forged, replayed, under-valued, over-valued and wrong-lane vouchers are refused with 402 and a
clear reason; a valid cumulative voucher is admitted; the loss cap holds; in-flight requests reserve
the payer's escrow across lanes; thawing funds and other nodes' deposits are not available; escrow
events reach the gate through EscrowFollower; unauthenticated work is bounded; operator-funded mode
signs vouchers."""

from __future__ import annotations

import base64
import json

import pytest
from eth_account import Account
from web3 import Web3

from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import SignedVoucher, Voucher, recover_voucher_signer, sign_voucher
from node.api.errors import ApiError, api_error_for
from node.daemon.payments.errors import ChainUnavailable, InvalidApiKey, PaymentChecksThrottled, PaymentRejected
from node.daemon.payments.escrow_reads import Web3EscrowReader
from node.db import make_session_factory, migrate
from node.dev.devnet import authorize_signer, fund_escrow
from node.daemon.payments.follower import EscrowFollower
from node.daemon.payments.ledger import Ledger
from node.metering import Cost, Price
from node.daemon.payments.gate import Lane, PaymentGate
from node.wire import VOUCHER_HEADER, encode_voucher_header, parse_voucher_header, voucher_header_json

DEPLOYER, NODE_KEY, PAYER_KEY, DELEGATE_KEY, STRANGER_KEY = DEV_PRIVATE_KEYS[:5]
NODE = Account.from_key(NODE_KEY).address
PAYER = Account.from_key(PAYER_KEY).address
PRICE = Price(compute_per_1k=1000, adapter_per_1k=3000)
MAX_COST = Cost(10, 30)  # a request's worst case, unless a test says otherwise


@pytest.fixture(scope="module")
def chain(anvil_session):
    w3 = Web3(Web3.HTTPProvider(anvil_session.url))
    snap = anvil_session.rpc("evm_snapshot")
    dep = deploy(anvil_session.url, DEPLOYER, out_dir=None, w3=w3)
    fund_escrow(w3, dep, DEPLOYER, PAYER_KEY, 10**6, NODE)
    authorize_signer(w3, dep, PAYER_KEY, DELEGATE_KEY)
    yield w3, dep
    anvil_session.rpc("evm_revert", [snap])


@pytest.fixture
def ledger(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    return Ledger(make_session_factory(url))


def _gate(chain, ledger, **kw) -> PaymentGate:
    w3, dep = chain
    return PaymentGate(
        node_address=NODE,
        mode=kw.pop("mode", "voucher"),
        escrow=Web3EscrowReader(w3, dep.addresses["UsageEscrow"]),
        book=ledger,
        chain_id=dep.chain_id,
        escrow_address=dep.addresses["UsageEscrow"],
        **kw,
    )


def _followed_gate(chain, ledger) -> tuple[PaymentGate, EscrowFollower]:
    """A gate whose escrow cache would outlive the test, and a follower started at the head: only
    the follower's events can change what the gate believes."""
    w3, dep = chain
    gate = _gate(chain, ledger, cache_ttl_s=3600.0)
    follower = EscrowFollower(w3, dep.addresses["UsageEscrow"], NODE, gate)
    follower.step()
    return gate, follower


async def _assert_thaw_of_600k_seen(gate, dep) -> None:
    """The payer's 10^6 deposit, 600,000 of it thawing: the gate offers 400,000, not the cached 10^6."""
    err = await _refused(gate, _header(dep), max_cost=Cost(500_000, 0))
    assert err.code == "escrow_insufficient" and err.body()["error"]["available"] == "400000"


def _header(dep, key=PAYER_KEY, payer=PAYER, node=NODE, adapter=7, c=0, a=0) -> dict:
    v = Voucher(payer, node, adapter, c, a)
    sv = SignedVoucher(v, sign_voucher(v, key, dep.chain_id, dep.addresses["UsageEscrow"]))
    return {VOUCHER_HEADER: encode_voucher_header(sv)}


async def _refused(gate, headers, adapter=7, max_cost=MAX_COST) -> ApiError:
    """The gate's refusal, as the API answers it (node.api.errors maps the domain error)."""
    with pytest.raises(PaymentRejected) as ei:
        await gate.admit(headers, adapter, PRICE, max_cost)
    err = api_error_for(ei.value)
    assert err is not None and err.status == 402
    return err


async def test_header_formats_round_trip(chain):
    _, dep = chain
    raw = _header(dep, c=5, a=9)[VOUCHER_HEADER]
    sv = parse_voucher_header(raw)
    assert (sv.voucher.compute_value, sv.voucher.adapter_value) == (5, 9)
    as_json = json.dumps(voucher_header_json(sv))  # plain JSON works too, as does the flat form
    assert parse_voucher_header(as_json) == sv
    assert parse_voucher_header(json.dumps(sv.to_json())) == sv
    numbers = voucher_header_json(sv)
    numbers["voucher"]["computeValue"] = 5  # JSON numbers accepted as well as decimal strings
    assert parse_voucher_header(json.dumps(numbers)) == sv


@pytest.mark.parametrize(
    "raw,needle",
    [
        ("", "payment required"),
        ("not base64 !!", "neither JSON nor base64"),
        (base64.b64encode(b"[1,2]").decode(), "voucher header must be"),
        ('{"voucher": {"payer": "0x12"}, "signature": "0x00"}', "malformed voucher"),
        ('{"voucher": {}, "signature": 5}', "malformed voucher"),
        ("{" * 5000, "too long"),
    ],
)
async def test_malformed_headers_get_402_with_reason(chain, ledger, raw, needle):
    err = await _refused(_gate(chain, ledger), {VOUCHER_HEADER: raw} if raw else {})
    assert needle in err.message
    assert err.body()["error"]["param"] == VOUCHER_HEADER


async def test_missing_voucher_quotes_the_price(chain, ledger):
    err = await _refused(_gate(chain, ledger), {})
    body = err.body()["error"]
    assert body["code"] == "payment_missing" and body["node"] == NODE
    assert body["price_per_1k"] == {"compute": "1000", "adapter": "3000"} and body["max_cost"] == "40"


async def test_forged_and_wrong_lane_vouchers_are_refused(chain, ledger):
    _, dep = chain
    gate = _gate(chain, ledger)
    err = await _refused(gate, _header(dep, key=STRANGER_KEY))  # signed by a key the payer never authorized
    assert err.code == "voucher_signer_unauthorized"
    # tampered after signing: values changed, signature kept → recovers to some other address
    sv = parse_voucher_header(_header(dep, c=0)[VOUCHER_HEADER])
    tampered = SignedVoucher(Voucher(PAYER, NODE, 7, 10**9, 0), sv.signature)
    assert (await _refused(gate, {VOUCHER_HEADER: encode_voucher_header(tampered)})).code == "voucher_signer_unauthorized"
    assert (await _refused(gate, _header(dep, node=PAYER))).code == "voucher_wrong_node"
    assert (await _refused(gate, _header(dep, adapter=8))).code == "voucher_wrong_adapter"
    assert (await _refused(gate, _header(dep, adapter=0, a=1), adapter=0)).code == "voucher_malformed"


async def test_cumulative_vouchers_replay_and_loss_cap(chain, ledger):
    _, dep = chain
    gate = _gate(chain, ledger)
    lane = Lane(PAYER, NODE, 7)
    authz = await gate.admit(_header(dep), 7, PRICE, Cost(10, 30))  # first request: nothing owed yet
    ledger.append_receipt(lane, _fake_receipt_maker(dep, lane, Cost(4, 12)))
    authz.release()
    assert ledger.get(lane).owed_compute == 4 and ledger.get(lane).owed_adapter == 12
    # replaying the first voucher (0, 0) no longer covers what the lane owes: 402 with the amount
    err = await _refused(gate, _header(dep))
    assert err.code == "voucher_undervalued"
    assert err.body()["error"]["needed"] == {"computeValue": "4", "adapterValue": "12"}
    assert (await _refused(gate, _header(dep, c=4, a=11))).code == "voucher_undervalued"
    # a delegate key the payer authorized on chain may sign the exact total
    authz = await gate.admit(_header(dep, key=DELEGATE_KEY, c=4, a=12), 7, PRICE, Cost(10, 30))
    stored = ledger.get(lane).voucher
    assert (stored.voucher.compute_value, stored.voucher.adapter_value) == (4, 12)
    assert (
        recover_voucher_signer(stored.voucher, stored.signature, dep.chain_id, dep.addresses["UsageEscrow"])
        == Account.from_key(DELEGATE_KEY).address
    )
    authz.release()
    # the ledger is rebuilt from the DB after a restart
    again = Ledger(ledger.sessions)
    assert again.get(lane).owed_compute == 4 and again.get(lane).voucher == stored


async def test_escrow_must_cover_the_worst_case(chain, ledger):
    _, dep = chain
    err = await _refused(_gate(chain, ledger), _header(dep), max_cost=Cost(10**6, 1))
    assert err.code == "escrow_insufficient"
    assert err.body()["error"]["needed"] == str(10**6 + 1)


async def test_same_lane_requests_are_serialized(chain, ledger):
    import asyncio

    _, dep = chain
    gate = _gate(chain, ledger)
    first = await gate.admit(_header(dep), 7, PRICE, Cost(1, 1))
    second = asyncio.ensure_future(gate.admit(_header(dep), 7, PRICE, Cost(1, 1)))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the lane
    ledger.append_receipt(first.lane, _fake_receipt_maker(dep, first.lane, Cost(1, 1)))
    first.release()
    with pytest.raises(PaymentRejected):  # by then the same voucher no longer covers the lane
        await second


async def test_operator_funded_mode(chain, ledger):
    w3, dep = chain
    fund_escrow(w3, dep, DEPLOYER, NODE_KEY, 10**6, NODE)
    operator = Account.from_key(NODE_KEY)
    gate = _gate(chain, ledger, mode="operator-funded", api_keys=["k-123"], operator_account=operator)
    with pytest.raises(InvalidApiKey) as ei:
        await gate.admit({}, 7, PRICE, Cost(1, 1))
    assert api_error_for(ei.value).status == 401 and api_error_for(ei.value).code == "invalid_api_key"
    with pytest.raises(InvalidApiKey):
        await gate.admit({"Authorization": "Bearer wrong"}, 7, PRICE, Cost(1, 1))
    authz = await gate.admit({"Authorization": "Bearer k-123"}, 7, PRICE, Cost(1, 1))
    assert authz.lane == Lane(operator.address, NODE, 7)
    ledger.append_receipt(
        authz.lane, _fake_receipt_maker(dep, authz.lane, Cost(2, 5)), lambda c, a: gate.operator_voucher(authz.lane, c, a)
    )
    authz.release()
    sv = ledger.get(authz.lane).voucher
    assert (sv.voucher.compute_value, sv.voucher.adapter_value) == (2, 5)
    assert recover_voucher_signer(sv.voucher, sv.signature, dep.chain_id, dep.addresses["UsageEscrow"]) == operator.address


async def test_issue2_overvalued_vouchers_are_refused(chain, ledger):
    """Issue #2: a first voucher of 2^127 (or 10^21 against a 10^6 escrow, or >= 2^128) was served
    and stored, poisoning the lane. Only owed <= value <= owed + worst case is admitted."""
    _, dep = chain
    gate = _gate(chain, ledger)
    for c, a in ((2**127, 0), (10**21, 0), (0, 2**128), (11, 0), (0, 31)):
        err = await _refused(gate, _header(dep, c=c, a=a), max_cost=Cost(10, 30))
        assert err.code == "voucher_overvalued", (c, a, err.code)
    assert ledger.get(Lane(PAYER, NODE, 7)).voucher is None  # nothing stored
    # the worst case itself is fine: a prepayment, kept only once the receipt makes the lane owe it
    lane = Lane(PAYER, NODE, 7)
    authz = await gate.admit(_header(dep, c=10, a=30), 7, PRICE, Cost(10, 30))
    assert ledger.get(lane).voucher is None
    ledger.append_receipt(lane, _fake_receipt_maker(dep, lane, Cost(4, 12)))
    authz.release()  # cost 4+12 < the prepaid 10+30: the node must not keep a voucher overcharging the payer
    assert ledger.get(lane).voucher is None
    authz = await gate.admit(_header(dep, c=10, a=30), 7, PRICE, Cost(10, 30))
    ledger.append_receipt(lane, _fake_receipt_maker(dep, lane, Cost(6, 18)))
    authz.release()  # now the lane owes exactly (10, 30): the prepaid voucher is kept
    stored = ledger.get(lane).voucher.voucher
    assert (stored.compute_value, stored.adapter_value) == (10, 30)


async def test_issue3_in_flight_requests_reserve_the_escrow_across_lanes(chain, ledger):
    """Issue #3: 8 concurrent requests on 8 lanes were admitted against a balance covering one."""
    import asyncio

    _, dep = chain
    gate = _gate(chain, ledger)
    worst = Cost(400_000, 300_000)  # the payer's 10^6 covers one such request, not two
    results = await asyncio.gather(
        *(gate.admit(_header(dep, adapter=a), a, PRICE, worst) for a in range(1, 9)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, PaymentRejected)]
    assert len(admitted) == 1 and len(refused) == 7
    assert all(r.code == "escrow_insufficient" for r in refused)
    assert gate.reserved(PAYER) == worst.total
    admitted[0].release()
    assert gate.reserved(PAYER) == 0 and gate.lock_count() == 0
    (await gate.admit(_header(dep, adapter=2), 2, PRICE, worst)).release()  # free again


async def test_issue3_thawing_and_other_nodes_funds_are_not_available(chain, ledger, anvil_session):
    """Node B cannot serve on a deposit made for node A, and funds thawing away do not count; the
    follower makes a thaw visible at the gate without waiting for the cache to expire."""
    w3, dep = chain
    snap = anvil_session.rpc("evm_snapshot")
    try:
        other = Account.from_key(STRANGER_KEY).address
        gate_b = PaymentGate(
            node_address=other,
            mode="voucher",
            escrow=Web3EscrowReader(w3, dep.addresses["UsageEscrow"]),
            book=ledger,
            chain_id=dep.chain_id,
            escrow_address=dep.addresses["UsageEscrow"],
        )
        err = await _refused(gate_b, _header(dep, node=other), max_cost=Cost(1, 1))
        assert err.code == "escrow_insufficient" and err.body()["error"]["available"] == "0"
        gate, follower = _followed_gate(chain, ledger)
        (await gate.admit(_header(dep), 7, PRICE, Cost(500_000, 0))).release()  # cached: 10^6 available
        from chain.contracts import Contracts

        Contracts(w3, dep).escrow.start_thaw(Account.from_key(PAYER_KEY), NODE, 600_000)
        assert follower.step() == 1
        await _assert_thaw_of_600k_seen(gate, dep)
    finally:
        anvil_session.rpc("evm_revert", [snap])


async def test_a_thaw_mined_into_a_reorged_block_still_reaches_the_gate(chain, ledger, anvil_session):
    """The attack on a follower that trusts heights it has read: the follower reads two blocks, a
    reorg replaces them, and the payer's thaw lands at a height it already read. The gate must still
    drop its cached balance, or the node serves on money that is leaving."""
    from chain.contracts import Contracts

    w3, dep = chain
    snap = anvil_session.rpc("evm_snapshot")
    try:
        gate, follower = _followed_gate(chain, ledger)
        (await gate.admit(_header(dep), 7, PRICE, Cost(500_000, 0))).release()  # cached: 10^6 available
        fork = anvil_session.rpc("evm_snapshot")
        anvil_session.rpc("evm_mine")
        anvil_session.rpc("evm_mine")
        assert follower.step() == 0  # read, and about to be replaced
        anvil_session.rpc("evm_revert", [fork])
        Contracts(w3, dep).escrow.start_thaw(Account.from_key(PAYER_KEY), NODE, 600_000)  # a height already read
        anvil_session.rpc("evm_mine")  # the new chain is as long as the old one: only the hash tells
        assert follower.step() == 1 and follower.reorgs == 1
        await _assert_thaw_of_600k_seen(gate, dep)
    finally:
        anvil_session.rpc("evm_revert", [snap])


async def test_issue4_revoked_signer_refused_after_the_event(chain, ledger, anvil_session):
    w3, dep = chain
    snap = anvil_session.rpc("evm_snapshot")
    try:
        gate, follower = _followed_gate(chain, ledger)
        (await gate.admit(_header(dep, key=DELEGATE_KEY), 7, PRICE, Cost(1, 1))).release()
        from chain.contracts import Contracts

        Contracts(w3, dep).escrow.revoke_signer(Account.from_key(PAYER_KEY), Account.from_key(DELEGATE_KEY).address)
        assert follower.step() == 1
        # the chain still redeems what it signed during the thaw, but the node takes nothing new
        assert (await _refused(gate, _header(dep, key=DELEGATE_KEY))).code == "voucher_signer_unauthorized"
    finally:
        anvil_session.rpc("evm_revert", [snap])


async def test_issue5_unauthenticated_work_is_bounded(chain, ledger):
    """Issue #5: 200 requests from fresh keys made 200 RPC reads and left 200 locks behind."""

    w3, dep = chain
    counting = _FlakyEscrow(Web3EscrowReader(w3, dep.addresses["UsageEscrow"]))
    gate = PaymentGate(
        node_address=NODE,
        mode="voucher",
        escrow=counting,
        book=ledger,
        chain_id=dep.chain_id,
        escrow_address=dep.addresses["UsageEscrow"],
        chain_reads_per_s=1.0,
        chain_read_burst=50,
    )
    outcomes = {"402": 0, "503": 0}
    for _ in range(300):
        key = Account.create()
        try:
            await gate.admit(_header(dep, key=key.key, payer=key.address), 7, PRICE, Cost(1, 1))
        except PaymentRejected:
            outcomes["402"] += 1
        except PaymentChecksThrottled as e:
            err = api_error_for(e)
            assert err.status == 503 and err.headers["Retry-After"] == "1" and err.code == "rate_limited"
            outcomes["503"] += 1
    assert gate.lock_count() == 0  # no lock left behind
    # the read budget: a burst of 50, then about one per second of the loop (a few seconds here)
    assert counting.calls <= 50 + 30, counting.calls
    assert outcomes["503"] > 0 and outcomes["402"] + outcomes["503"] == 300


def _fake_receipt_maker(dep, lane, cost):
    """Builds a real signed receipt for `cost` (the API's issuer is tested end to end elsewhere)."""
    import os

    from chain.eip712 import NO_ATTRIBUTION_HASH, Receipt, SignedReceipt, output_hash, receipt_digest, sign_digest

    def make(seq):
        r = Receipt(
            os.urandom(32),
            lane.payer,
            lane.node,
            lane.adapter_id,
            seq,
            3,
            4,
            cost.compute,
            cost.adapter,
            output_hash("x"),
            NO_ATTRIBUTION_HASH,
            1,
        )
        d = receipt_digest(r, dep.chain_id, dep.addresses["ReceiptLog"])
        return SignedReceipt(r, sign_digest(d, NODE_KEY)), d

    return make


class _FlakyEscrow:
    """The real escrow reader behind a switch that makes every call fail like a dead RPC."""

    def __init__(self, inner):
        self.inner, self.down, self.calls = inner, False, 0

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def call(*a):
            self.calls += 1
            if self.down:
                raise ConnectionError("RPC down")
            return fn(*a)

        return call


async def test_rpc_down_serves_on_last_known_values_else_503(chain, ledger):

    w3, dep = chain
    flaky = _FlakyEscrow(Web3EscrowReader(w3, dep.addresses["UsageEscrow"]))
    gate = PaymentGate(
        node_address=NODE,
        mode="voucher",
        escrow=flaky,
        book=ledger,
        chain_id=dep.chain_id,
        escrow_address=dep.addresses["UsageEscrow"],
        cache_ttl_s=0.0,
    )  # every call reads the chain
    (await gate.admit(_header(dep, key=DELEGATE_KEY), 7, PRICE, Cost(1, 1))).release()
    flaky.down = True
    (await gate.admit(_header(dep, key=DELEGATE_KEY), 7, PRICE, Cost(1, 1))).release()  # last known values
    with pytest.raises(ChainUnavailable) as ei:  # a payer never seen: nothing to fall back on
        await gate.admit(_header(dep, key=STRANGER_KEY, payer=Account.from_key(STRANGER_KEY).address), 7, PRICE, Cost(1, 1))
    err = api_error_for(ei.value)
    assert err.status == 503 and err.headers["Retry-After"] == "5" and err.code == "chain_unavailable"


def test_chain_reads_of_many_keys_take_one_round_trip_per_batch(chain, monkeypatch):
    """`call_many` (the gate reads all of a payer's lanes with it) returns what one `call` per
    key returns, structs included, in JSON-RPC batches of at most CALL_BATCH: one round trip
    each, where the gate once made one per lane (17 per payer in bench-api, ~1.5 s under load)."""
    import chain.contracts as contracts_mod
    from chain.contracts import UsageEscrowBinding

    w3, dep = chain
    other = Account.from_key(STRANGER_KEY).address
    fund_escrow(w3, dep, DEPLOYER, PAYER_KEY, 777, other)  # a second account of the payer, another amount
    escrow = UsageEscrowBinding(w3, dep.addresses["UsageEscrow"], "UsageEscrow")
    keys = [(PAYER, NODE), (PAYER, other), (other, NODE), (PAYER, other), (PAYER, NODE)]
    one_by_one = [escrow.account_of(p, n) for p, n in keys]
    assert one_by_one[0].balance != one_by_one[1].balance  # distinct values: a mixed-up order would show

    batches = []
    inner = w3.provider.make_batch_request
    monkeypatch.setattr(w3.provider, "make_batch_request", lambda reqs: batches.append(len(reqs)) or inner(reqs))
    monkeypatch.setattr(contracts_mod, "CALL_BATCH", 2)
    assert escrow.call_many("accountOf", keys) == one_by_one
    assert batches == [2, 2, 1]
    assert escrow.call_many("accountOf", []) == []

    reader = Web3EscrowReader(w3, dep.addresses["UsageEscrow"])
    lanes = [Lane(PAYER, NODE, a) for a in (0, 7, 9)]
    collected_one_by_one = [escrow.collected(ln.payer, ln.node, ln.adapter_id) for ln in lanes]
    assert reader.collected_many(lanes) == [(c.compute, c.adapter) for c in collected_one_by_one]


def test_a_batched_read_that_fails_raises(chain):
    """The gate turns a failed read into its last known value or a 503; a batch must raise, never
    hand back a partial list: a dead RPC raises its connection error, a call that reverts raises
    the decoded revert."""
    import requests

    from chain.contracts import Contracts, UsageEscrowBinding
    from chain.reverts import ContractRevert

    w3, dep = chain
    dead = Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 2}))
    with pytest.raises(requests.exceptions.ConnectionError):
        UsageEscrowBinding(dead, dep.addresses["UsageEscrow"], "UsageEscrow").call_many("accountOf", [(PAYER, NODE)])
    datasets = Contracts(w3, dep).datasets
    with pytest.raises(ContractRevert, match="DatasetRegistryUnknownContribution"):
        datasets.call_many("getContribution", [(10**9,)])

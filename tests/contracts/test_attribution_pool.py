"""AttributionPool: redemptions fill a pool per (node, dataset); settling a committed batch pays the
contributions its answers drew on, by weight, and the rest by accepted weight — exact to the wei."""

from __future__ import annotations

import pytest

from chain.attribution_entries import EntryOutOfRange, entries_hash, pack
from chain.contract_types import (
    AttributionRefused,
    BatchSettled,
    DatasetRewarded,
    PoolDrained,
    PoolFilled,
    PoolFlushed,
)
from chain.reverts import as_revert
from chain.eip712 import Receipt, Voucher, attribution_hash, output_hash, receipt_digest, sign_voucher
from chain.merkle import StandardMerkleTree

BPS = 10_000
FEE = 500


@pytest.fixture
def world2(env, stake_node):
    """Dataset 1: contributions 1 (weight 1), 2 (weight 3), 4 (pending); dataset 2: contribution 3
    (weight 5). Adapter 1: 60 % owner, 30 % dataset 1, 10 % dataset 2. The node is staked; the payer
    has 10^21 deposited for it."""
    c = env.c
    c.datasets.create_dataset(env.curator, "d1", "MIT", "")
    c.datasets.create_dataset(env.curator, "d2", "MIT", "")
    c.datasets.contribute(env.contributor, 1, "bafyc1", 100)
    c.datasets.contribute(env.contributor2, 1, "bafyc2", 300)
    c.datasets.contribute(env.contributor, 2, "bafyc3", 500)
    c.datasets.contribute(env.contributor2, 1, "bafyc4", 10)
    c.datasets.accept(env.curator, 1, 1)
    c.datasets.accept(env.curator, 2, 3)
    c.datasets.accept(env.curator, 3, 5)
    c.adapters.register(env.owner, "m", "bafyA", 8, 10**15, 6000, [1, 2], [3000, 1000])
    stake_node(env, env.node)
    c.escrow.deposit(env.payer, env.node.address, 10**21)
    return c


def redeem(env, adapter_value: int) -> tuple[int, int]:
    """Raise lane (payer, node, 1) by `adapter_value`; return the dataset parts (d1, d2) redeemed."""
    c = env.c
    col = c.escrow.collected(env.payer.address, env.node.address, 1)
    v = Voucher(env.payer.address, env.node.address, 1, col.compute, col.adapter + adapter_value)
    c.escrow.redeem(env.node, [v], [sign_voucher(v, env.payer.key, env.chain_id, c.escrow.address)])
    rest = adapter_value - adapter_value * FEE // BPS
    return rest * 3000 // BPS, rest * 1000 // BPS


def commit(env, node=None) -> int:
    node = node or env.node
    seq = env.c.receipts.last_seq(node.address) + 1
    env.c.receipts.commit_batch(node, seq, b"\x02" * 32, 1, "bafy-receipts")
    return seq


def events(env, receipt, cls):
    return [e for e in env.c.events_of(receipt) if isinstance(e, cls)]


def credited(env, ids, before=None) -> dict[int, int]:
    """{contribution: attributed amount credited since `before`} for those credited (no event per credit)."""
    before = before or {}
    now = {i: env.c.datasets.pending_attributed(i) - before.get(i, 0) for i in ids}
    return {i: a for i, a in now.items() if a}


def test_settle_pays_by_attribution_exactly_and_conserves(env, world2):
    c = env.c
    p1, p2 = redeem(env, 10**18 + 7)  # odd amount: shares do not divide evenly
    assert c.pool.pool_of(env.node.address, 1).balance == p1 and c.pool.pool_of(env.node.address, 2).balance == p2
    assert c.datasets.pending_reward(1) == 0  # nothing reaches contributors before a batch settles
    vault_before = c.token.balance_of(c.vault.address)
    seq = commit(env)
    # dataset 1: unattributed 5, contribution 1: 7, contribution 2: 11 (W = 23); dataset 2: contribution 3 only
    entries = [(1, 0, 5), (1, 1, 7), (1, 2, 11), (2, 3, 13)]
    r = c.pool.settle(env.node, seq, entries)
    got = credited(env, (1, 2, 3, 4))
    assert got == {1: p1 * 7 // 23, 2: p1 * 11 // 23, 3: p2}
    (rewarded,) = events(env, r, DatasetRewarded)  # only dataset 1 has an unattributed part
    assert rewarded.dataset_id == 1 and rewarded.amount == p1 - got[1] - got[2]  # share of 5 + rounding
    assert sum(got.values()) + rewarded.amount == p1 + p2  # conservation to the wei
    drained = {e.dataset_id: (e.amount, e.total_weight) for e in events(env, r, PoolDrained)}
    assert drained == {1: (p1, 23), 2: (p2, 13)}
    (settled,) = events(env, r, BatchSettled)  # a hash of the entries, which the calldata holds
    assert (settled.node, settled.seq, settled.entries_hash, settled.entry_count) == (
        env.node.address,
        seq,
        entries_hash(entries),
        4,
    )
    assert bytes(c.pool.entries_hash(pack(entries))) == entries_hash(entries)  # ours is the contract's
    assert c.pool.pool_of(env.node.address, 1).balance == 0 and c.pool.settled_seq(env.node.address) == seq
    # the unattributed part splits by accepted weight (1 : 3); attributed parts are on top
    acc1 = rewarded.amount * 10**24 // 4 * 1 // 10**24
    assert c.datasets.pending_attributed(1) == got[1] and c.datasets.pending_reward(1) == got[1] + acc1
    # harvesting pays both parts; nothing left over is owed to anyone
    c.datasets.harvest(env.stranger, [1, 2, 3])
    assert c.vault.claimable(env.contributor.address) == got[1] + acc1 + got[3]
    assert c.datasets.pending_reward(1) == c.datasets.pending_reward(3) == 0
    assert c.token.balance_of(c.vault.address) == vault_before  # bookkeeping only: no tokens moved
    dust = c.token.balance_of(c.vault.address) - c.vault.total_claimable() - c.datasets.pending_reward(2)
    assert 0 <= dust <= 1  # accumulator flooring only


def test_huge_weights_do_not_overflow_and_conserve(env, world2):
    c = env.c
    p1, _ = redeem(env, 10**20)
    seq = commit(env)
    top = 2**128 - 1
    r = c.pool.settle(env.node, seq, [(1, 0, top), (1, 1, top), (1, 2, 1)])
    got = credited(env, (1, 2))
    (rewarded,) = [e for e in events(env, r, DatasetRewarded) if e.dataset_id == 1]
    assert got[1] == p1 * top // (2 * top + 1) and 2 not in got  # 1 / 2^129 of the pool floors to 0
    assert got[1] + rewarded.amount == p1


def test_only_accepted_contributions_of_the_dataset_are_credited(env, world2, reverts):
    c = env.c
    p1, p2 = redeem(env, 10**18)
    seq = commit(env)
    # contribution 3 belongs to dataset 2, 4 is pending, 99 does not exist: all refused into dataset 1's split
    r = c.pool.settle(env.node, seq, [(1, 1, 1), (1, 3, 1), (1, 4, 1), (1, 99, 1)])
    refused = {e.contribution_id: (e.dataset_id, e.amount) for e in events(env, r, AttributionRefused)}
    share = p1 // 4
    assert refused == {3: (1, share), 4: (1, share), 99: (1, share)}
    assert c.datasets.pending_attributed(1) == share and c.datasets.pending_attributed(3) == 0
    (rewarded,) = events(env, r, DatasetRewarded)
    assert rewarded.amount == p1 - share
    assert c.pool.pool_of(env.node.address, 2).balance == p2  # dataset 2 was not named: it waits


def test_contribution_rejected_later_stops_earning(env, world2, reverts):
    c = env.c
    p1, _ = redeem(env, 10**18)
    c.pool.settle(env.node, commit(env), [(1, 2, 1)])
    assert c.datasets.pending_attributed(2) == p1
    c.datasets.reject(env.curator, 2)  # the curator rejects it later: it keeps what it earned
    assert c.vault.claimable(env.contributor2.address) == p1 and c.datasets.pending_reward(2) == 0
    assert c.datasets.get_dataset(1).total_weight == 1
    p1b, _ = redeem(env, 10**18)
    r = c.pool.settle(env.node, commit(env), [(1, 1, 1), (1, 2, 1)])
    (refused,) = events(env, r, AttributionRefused)
    assert (refused.contribution_id, refused.amount) == (2, p1b // 2)
    assert c.vault.claimable(env.contributor2.address) == p1  # nothing more
    with reverts("DatasetRegistryNotAccepted", 2, 3):
        c.datasets.harvest(env.stranger, [2])
    # the accepted-weight split no longer counts it either: contribution 1 gets the refused half too
    assert c.datasets.pending_reward(1) == p1b // 2 + (p1b - p1b // 2)


def _voucher(env, adapter_value: int):
    """The lane (payer, node, 1) raised by `adapter_value`, signed; and its dataset parts (d1, d2)."""
    c = env.c
    col = c.escrow.collected(env.payer.address, env.node.address, 1)
    v = Voucher(env.payer.address, env.node.address, 1, col.compute, col.adapter + adapter_value)
    rest = adapter_value - adapter_value * FEE // BPS
    return v, sign_voucher(v, env.payer.key, env.chain_id, c.escrow.address), (rest * 3000 // BPS, rest * 1000 // BPS)


def _state(env) -> tuple:
    """Everything a settlement moves: credits, accepted-weight rewards, pools, vault balances, settled seq."""
    c, node = env.c, env.node.address
    return (
        [c.datasets.pending_attributed(i) for i in (1, 2, 3)],
        [c.datasets.pending_reward(i) for i in (1, 2, 3)],
        [c.pool.pool_of(node, d).balance for d in (1, 2)],
        [c.vault.claimable(a) for a in (node, env.owner.address, env.deployer.address)],
        c.token.balance_of(c.vault.address),
        c.pool.settled_seq(node),
        c.escrow.collected(env.payer.address, node, 1),
    )


def test_redeem_and_settle_equals_redeem_then_settle(env, world2, anvil):
    """The fused path moves exactly what the two transactions move, to the wei: here with money already
    waiting in dataset 1's pool, and dataset 2 not named by the batch (its part fills its pool)."""
    c = env.c
    redeem(env, 3 * 10**17 + 1)  # an earlier redemption: dataset 1's and 2's pools hold money
    seq = commit(env)
    entries = [(1, 0, 5), (1, 1, 7), (1, 2, 11)]
    v, sig, _ = _voucher(env, 10**18 + 7)
    snap = anvil.rpc("evm_snapshot")
    c.escrow.redeem(env.node, [v], [sig])
    two = c.pool.settle(env.node, seq, entries)
    separate = _state(env)
    anvil.rpc("evm_revert", [snap])
    fused = c.escrow.redeem_and_settle(env.node, [v], [sig], seq, pack(entries))
    assert _state(env) == separate
    drained = {e.dataset_id: (e.amount, e.total_weight) for e in events(env, fused, PoolDrained)}
    assert drained == {e.dataset_id: (e.amount, e.total_weight) for e in events(env, two, PoolDrained)}
    assert [(e.dataset_id, e.amount) for e in events(env, fused, PoolFilled)] == [(2, _voucher(env, 10**18 + 7)[2][1])]
    assert c.pool.pool_of(env.node.address, 1).balance == 0 and c.pool.settled_seq(env.node.address) == seq


def test_redeem_and_settle_of_a_fresh_pool_writes_no_pool(env, world2, anvil):
    """Gas: a pool the same transaction fills and drains is never written (no 20,000-gas slot creation)."""
    c = env.c
    seq = commit(env)
    v, sig, (p1, p2) = _voucher(env, 10**18)
    r = c.escrow.redeem_and_settle(env.node, [v], [sig], seq, pack([(1, 1, 1), (2, 3, 1)]))
    assert credited(env, (1, 3)) == {1: p1, 3: p2}
    assert not events(env, r, PoolFilled)
    pool_slots = (
        anvil.rpc(
            "debug_traceTransaction",
            [r["transactionHash"].to_0x_hex(), {"tracer": "prestateTracer", "tracerConfig": {"diffMode": True}}],
        )["post"]
        .get(c.pool.address.lower(), {})
        .get("storage", {})
    )
    assert len(pool_slots) == 1  # settledSeq only


def test_redeem_and_settle_is_all_or_nothing(env, world2, reverts, anvil):
    """Hostile: a settle the pool refuses refuses the redemption with it (nothing is paid, nothing
    moves); a replayed voucher (nothing to pay) still settles what the pools hold; only the escrow
    may call fillAndSettle."""
    c = env.c
    v, sig, _ = _voucher(env, 10**18)
    before = _state(env)
    with reverts("AttributionPoolBatchNotCommitted", env.node.address, 1):
        c.escrow.redeem_and_settle(env.node, [v], [sig], 1, pack([(1, 1, 1)]))
    seq = commit(env)
    for bad_seq, entries, name in (
        (seq + 1, [(1, 1, 1)], "AttributionPoolWrongSequence"),
        (seq, [(1, 2, 1), (1, 1, 1)], "AttributionPoolUnsortedEntry"),
        (seq, [(1, 1, 0)], "AttributionPoolInvalidWeight"),
        (seq, [(1, i, 1) for i in range(1, 4098)], "AttributionPoolTooManyEntries"),
    ):
        with reverts(name):
            c.escrow.redeem_and_settle(env.node, [v], [sig], bad_seq, pack(entries))
    with reverts("UsageEscrowBadBatch", 0, 0):
        c.escrow.redeem_and_settle(env.node, [], [], seq, pack([(1, 1, 1)]))
    with reverts("UsageEscrowNodeNotStaked", env.stranger.address):  # a stranger is no node
        c.escrow.redeem_and_settle(env.stranger, [v], [sig], seq, pack([(1, 1, 1)]))
    assert _state(env) == before  # nothing was redeemed by any of them
    with reverts("AttributionPoolNotEscrow", env.node.address):
        c.pool.send(env.node, "fillAndSettle", env.node.address, [1], [10**30], seq, pack([(1, 1, 1)]))
    p1, _ = redeem(env, 10**18)  # plain redeem: the pool holds it
    r = c.escrow.redeem_and_settle(env.node, [v], [sig], seq, pack([(1, 2, 1)]))  # v is stale now: pays nothing
    assert credited(env, (2,)) == {2: p1} and c.pool.settled_seq(env.node.address) == seq
    assert [e.amount for e in events(env, r, PoolDrained)] == [p1]


def test_settle_hostile_input(env, world2, reverts, anvil):
    c = env.c
    redeem(env, 10**18)
    with reverts("AttributionPoolWrongSequence", 1, 2):
        c.pool.settle(env.node, 2, [])
    with reverts("AttributionPoolBatchNotCommitted", env.node.address, 1):
        c.pool.settle(env.node, 1, [(1, 1, 1)])
    seq = commit(env)
    # a foreign batch: the stranger never committed seq 1, the node did
    with reverts("AttributionPoolBatchNotCommitted", env.stranger.address, 1):
        c.pool.settle(env.stranger, 1, [(1, 1, 1)])
    for bad, index in (
        ([(1, 2, 1), (1, 1, 1)], 1),
        ([(1, 1, 1), (1, 1, 1)], 1),
        ([(2, 3, 1), (1, 1, 1)], 1),
        ([(0, 1, 1)], 0),
        ([(1, 1, 1), (2, 3, 1), (1, 2, 1)], 2),
    ):
        with reverts("AttributionPoolUnsortedEntry", index):
            c.pool.settle(env.node, seq, bad)
    with reverts("AttributionPoolInvalidWeight", 1, 0):
        c.pool.settle(env.node, seq, [(1, 1, 1), (1, 2, 0)])
    for out_of_range in ((1, 1, 2**128), (2**32, 1, 1), (1, 2**96, 1), (1, -1, 1)):  # do not fit the packed word
        with pytest.raises(EntryOutOfRange):
            c.pool.settle(env.node, seq, [out_of_range])
    with reverts("AttributionPoolTooManyEntries", 4097):
        c.pool.settle(env.node, seq, [(1, i, 1) for i in range(1, 4098)])
    with reverts("AttributionPoolNotEscrow", env.node.address):
        c.pool.fill(env.node, env.node.address, [1], [10**30])
    c.pool.settle(env.node, seq, [(1, 1, 1)])
    with reverts("AttributionPoolWrongSequence", 2, 1):  # settled once only
        c.pool.settle(env.node, seq, [(1, 1, 1)])
    # as the escrow (impersonated: its own code never does this): mismatched lengths, overflow
    esc = c.escrow.address
    anvil.rpc("anvil_impersonateAccount", [esc])
    anvil.rpc("anvil_setBalance", [esc, hex(10**18)])
    try:
        for args, name in (([[1], [1, 2]], "AttributionPoolLengthMismatch"), ([[1], [2**128]], "AttributionPoolOverflow")):
            data = c.pool.contract.encode_abi("fill", args=[env.node.address, *args])
            with pytest.raises(Exception) as ei:
                env.w3.eth.call({"from": esc, "to": c.pool.address, "data": data})
            assert as_revert(ei.value).name == name
    finally:
        anvil.rpc("anvil_stopImpersonatingAccount", [esc])


def test_flush_after_delay_moves_an_undrained_pool_to_the_split(env, world2, reverts, anvil):
    c = env.c
    with reverts("AttributionPoolNothingToFlush", env.node.address, 1):
        c.pool.flush(env.stranger, env.node.address, 1)
    p1, _ = redeem(env, 10**18)
    since = c.pool.pool_of(env.node.address, 1).since
    delay = c.pool.flush_delay()
    with reverts("AttributionPoolTooEarly", since + delay):
        c.pool.flush(env.stranger, env.node.address, 1)
    env.mine_time(delay, anvil.rpc)
    r = c.pool.flush(env.stranger, env.node.address, 1)  # anyone may
    (ev,) = events(env, r, PoolFlushed)
    assert (ev.dataset_id, ev.amount) == (1, p1) and c.pool.pool_of(env.node.address, 1).balance == 0
    assert c.datasets.pending_reward(1) + c.datasets.pending_reward(2) in (p1, p1 - 1)


def test_a_condemned_node_cannot_steer_its_pools(env, world2, reverts, anvil):
    """Attack: a node proven to lie (its bond condemned, then slashed) has nothing left to lose, yet
    its pools still hold redeemed dataset money. Before the fix it settled them with weights of its
    choosing (all to contribution 2, say, its colluder). Now it cannot settle at all, and anyone
    flushes its pools at once to the accepted-weight split."""
    c = env.c
    p1, p2 = redeem(env, 10**18)
    seq = commit(env)
    r, lie_seq, proof = _lying_receipt(env, [1, 3], [9000, 9000])
    c.nodes.slash_attribution(env.stranger, r, lie_seq, proof, [1, 3], [9000, 9000])
    assert c.nodes.get_node(env.node.address).condemned
    before = {i: c.datasets.pending_attributed(i) for i in (1, 2, 3)}
    with reverts("AttributionPoolNodeNotAccountable", env.node.address):
        c.pool.settle(env.node, seq, [(1, 2, 1)])
    _after_the_window(env, anvil)  # slashed whole: no bond, still nothing to lose
    with reverts("AttributionPoolNodeNotAccountable", env.node.address):
        c.pool.settle(env.node, seq, [(1, 2, 1)])
    assert {i: c.datasets.pending_attributed(i) for i in (1, 2, 3)} == before
    for dataset_id, amount in ((1, p1), (2, p2)):  # long before flushDelay: at once
        assert (
            c.pool.pool_of(env.node.address, dataset_id).since + c.pool.flush_delay() > env.w3.eth.get_block("latest").timestamp
        )
        (ev,) = events(env, c.pool.flush(env.stranger, env.node.address, dataset_id), PoolFlushed)
        assert (ev.dataset_id, ev.amount) == (dataset_id, amount)
        assert c.pool.pool_of(env.node.address, dataset_id).balance == 0
    # dataset 1 split by accepted weight (1 : 3), dataset 2 all to contribution 3; flooring leaves dust
    assert p1 - 1 <= c.datasets.pending_reward(1) + c.datasets.pending_reward(2) <= p1
    assert p2 - 1 <= c.datasets.pending_reward(3) <= p2


def _committed_receipt(env, ids, bps):
    c = env.c
    r = Receipt(
        request_id=b"\x05" * 32,
        payer=env.payer.address,
        node=env.node.address,
        adapter_id=1,
        seq=1,
        prompt_tokens=3,
        completion_tokens=4,
        compute_cost=0,
        adapter_cost=10,
        output_hash=output_hash("x"),
        attribution_hash=attribution_hash(ids, bps),
        timestamp=1,
    )
    other = Receipt(**{**r.__dict__, "request_id": b"\x06" * 32})
    tree = StandardMerkleTree.of([[receipt_digest(x, env.chain_id, c.receipts.address)] for x in (r, other)], ["bytes32"])
    seq = c.receipts.last_seq(env.node.address) + 1
    c.receipts.commit_batch(env.node, seq, tree.root, 2, "bafy")
    return r, seq, tree.proof(0)  # proofs are by input position


def _raw_attribution_hash(ids, bps) -> bytes:
    """keccak256(abi.encode(ids, bps)) without chain.eip712's checks: what a lying node could sign."""
    from eth_abi import encode
    from eth_utils import keccak

    return keccak(encode(["uint256[]", "uint256[]"], [ids, bps]))


def _lying_receipt(env, ids, bps):
    """A receipt of the node whose attribution hashes (`ids`, `bps`) unchecked, committed with another leaf."""
    c = env.c
    r = Receipt(
        request_id=b"\x07" * 32,
        payer=env.payer.address,
        node=env.node.address,
        adapter_id=1,
        seq=1,
        prompt_tokens=3,
        completion_tokens=4,
        compute_cost=0,
        adapter_cost=10,
        output_hash=output_hash("x"),
        attribution_hash=_raw_attribution_hash(ids, bps),
        timestamp=1,
    )
    other = Receipt(**{**r.__dict__, "request_id": b"\x08" * 32})
    tree = StandardMerkleTree.of([[receipt_digest(x, env.chain_id, c.receipts.address)] for x in (r, other)], ["bytes32"])
    seq = c.receipts.last_seq(env.node.address) + 1
    c.receipts.commit_batch(env.node, seq, tree.root, 2, "bafy")
    return r, seq, tree.proof(0)


OUTSIDE_ADAPTER, OVER_TOTAL = 1, 2


def test_a_single_leaf_proves_an_attribution_fault(env, world2, reverts):
    """What the slash without arbitrator calls: adapter 1 draws on datasets 1 and 2 only."""
    c = env.c
    c.datasets.create_dataset(env.curator, "d3", "MIT", "")
    c.datasets.contribute(env.contributor, 3, "bafyc5", 10)  # contribution 5 in dataset 3
    r, seq, proof = _committed_receipt(env, [1, 5], [5000, 5000])
    assert c.pool.attribution_fault(r, seq, proof, [1, 5], [5000, 5000]) == OUTSIDE_ADAPTER
    r, seq, proof = _committed_receipt(env, [1, 3], [5000, 5000])
    assert c.pool.attribution_fault(r, seq, proof, [1, 3], [5000, 5000]) == 0
    r, seq, proof = _committed_receipt(env, [1, 77], [5000, 5000])  # unknown contribution
    assert c.pool.attribution_fault(r, seq, proof, [1, 77], [5000, 5000]) == OUTSIDE_ADAPTER
    with reverts("AttributionPoolAttributionMismatch"):
        c.pool.attribution_fault(r, seq, proof, [1, 77], [5000, 4999])
    with reverts("AttributionPoolReceiptNotCommitted"):
        c.pool.attribution_fault(r, seq + 1, proof, [1, 77], [5000, 5000])
    # more than the whole answer attributed, or lists of different lengths
    for ids, bps in (([1, 3], [6000, 5000]), ([1], [2**256 - 1]), ([1, 3], [10_000]), ([1, 3], [2**255, 2**255])):
        r, seq, proof = _lying_receipt(env, ids, bps)
        assert c.pool.attribution_fault(r, seq, proof, ids, bps) == OVER_TOTAL, (ids, bps)


def _after_the_window(env, anvil):
    """Past the dispute window of the node's last commit, anyone executes its condemned bond's slash."""
    env.mine_time(env.c.nodes.dispute_terms().dispute_window + 1, anvil.rpc)
    return env.c.nodes.execute_condemnation(env.stranger, env.node.address)


def test_slash_attribution_outside_the_adapter_pays_the_fisherman(env, world2, reverts, anvil):
    """Attack: the node credits contribution 5 (dataset 3) to an answer of adapter 1 (datasets 1, 2)
    to steer dataset money. Anyone proves it from the one leaf, once: the bond is condemned at once
    (no more redemptions), and half of it is paid to the prover after the dispute window of the
    node's last commit (so that fishermen disputing its other receipts are paid first)."""
    from chain.contract_types import AttributionSlashed, NodeCondemned, NodeSlashed

    c = env.c
    c.datasets.create_dataset(env.curator, "d3", "MIT", "")
    c.datasets.contribute(env.contributor, 3, "bafyc5", 10)
    bond = c.nodes.get_node(env.node.address).bond
    r, seq, proof = _committed_receipt(env, [1, 5], [5000, 5000])
    before = c.token.balance_of(env.stranger.address)
    tx = c.nodes.slash_attribution(env.stranger, r, seq, proof, [1, 5], [5000, 5000])
    (cond,) = events(env, tx, NodeCondemned)
    assert cond.beneficiary == env.stranger.address and not c.nodes.can_redeem(env.node.address)
    (a,) = events(env, tx, AttributionSlashed)
    digest = receipt_digest(r, env.chain_id, c.receipts.address)
    assert (a.node, a.batch_seq, a.receipt_digest, a.fault) == (env.node.address, seq, digest, OUTSIDE_ADAPTER)
    (ev,) = events(env, _after_the_window(env, anvil), NodeSlashed)
    assert (ev.node, ev.beneficiary, ev.amount, ev.reward) == (env.node.address, env.stranger.address, bond, bond // 2)
    assert c.token.balance_of(env.stranger.address) - before == bond // 2
    assert c.nodes.get_node(env.node.address).bond == 0 and c.nodes.attribution_slashed(digest)
    # the same leaf again, even after the node bonds again: refused
    c.nodes.add_bond(env.node, bond)
    with reverts("NodeRegistryAlreadySlashed", digest):
        c.nodes.slash_attribution(env.stranger, r, seq, proof, [1, 5], [5000, 5000])
    assert c.nodes.get_node(env.node.address).bond == bond


def test_slash_attribution_over_the_whole_answer(env, world2, anvil):
    c = env.c
    bond = c.nodes.get_node(env.node.address).bond
    r, seq, proof = _lying_receipt(env, [1, 3], [9000, 9000])
    c.nodes.slash_attribution(env.stranger, r, seq, proof, [1, 3], [9000, 9000])
    assert c.nodes.get_node(env.node.address).condemned
    _after_the_window(env, anvil)
    assert c.nodes.get_node(env.node.address).bond == 0 and c.nodes.burned() == bond - bond // 2


def test_slash_attribution_refuses_honest_uncommitted_and_hostile_leaves(env, world2, reverts):
    c = env.c
    bond = c.nodes.get_node(env.node.address).bond
    r, seq, proof = _committed_receipt(env, [1, 3], [5000, 5000])
    digest = receipt_digest(r, env.chain_id, c.receipts.address)
    with reverts("NodeRegistryAttributionHonest", digest):  # an honest receipt: dispute it instead
        c.nodes.slash_attribution(env.stranger, r, seq, proof, [1, 3], [5000, 5000])
    r5, _, _ = _committed_receipt(env, [1, 5], [5000, 5000])
    with reverts("AttributionPoolReceiptNotCommitted"):  # a lying leaf never committed in that batch
        c.nodes.slash_attribution(env.stranger, r5, seq, proof, [1, 5], [5000, 5000])
    with reverts("AttributionPoolReceiptNotCommitted"):  # a batch that does not exist
        c.nodes.slash_attribution(env.stranger, r, seq + 50, proof, [1, 3], [5000, 5000])
    with reverts("AttributionPoolReceiptNotCommitted"):  # a hostile, oversized proof
        c.nodes.slash_attribution(env.stranger, r, seq, [b"\x01" * 32] * 300, [1, 3], [5000, 5000])
    with reverts("AttributionPoolAttributionMismatch"):  # arrays other than the signed ones
        c.nodes.slash_attribution(env.stranger, r, seq, proof, [1, 5], [5000, 5000])
    with reverts("AttributionPoolAttributionMismatch"):  # hostile, oversized arrays: only hashed
        c.nodes.slash_attribution(env.stranger, r, seq, proof, list(range(1, 3001)), [1] * 3000)
    with reverts("AttributionPoolAttributionMismatch"):
        c.nodes.slash_attribution(env.stranger, r, seq, proof, [1, 3], [5000])
    assert c.nodes.get_node(env.node.address).bond == bond and not c.nodes.attribution_slashed(digest)


def test_a_contribution_rejected_after_the_answer_keeps_the_leaf_honest(env, world2, reverts):
    """The receipt credited contribution 3 while it was accepted in one of the adapter's datasets;
    the curator rejects it later. The leaf was right when signed: no fault, no slash (the
    contribution stops earning at payment time instead)."""
    c = env.c
    r, seq, proof = _committed_receipt(env, [1, 3], [5000, 5000])
    c.datasets.reject(env.curator, 3)
    assert c.datasets.get_contribution(3).status == "rejected"
    assert c.pool.attribution_fault(r, seq, proof, [1, 3], [5000, 5000]) == 0
    digest = receipt_digest(r, env.chain_id, c.receipts.address)
    with reverts("NodeRegistryAttributionHonest", digest):
        c.nodes.slash_attribution(env.stranger, r, seq, proof, [1, 3], [5000, 5000])


def test_constructor_refuses_zero_addresses(env, reverts):
    from chain.artifacts import load_artifact
    from chain.send import send_tx

    art = load_artifact("AttributionPool")
    zero = "0x" + "00" * 20
    c = env.c
    good = [c.datasets.address, c.escrow.address, c.receipts.address, c.adapters.address, c.nodes.address]
    for k in range(len(good)):  # each address in turn
        args = [zero if j == k else a for j, a in enumerate(good)]
        data = env.w3.eth.contract(abi=art.abi_list, bytecode=art.bytecode).constructor(*args, 60).data_in_transaction
        with reverts("AttributionPoolZeroAddress"):
            send_tx(env.w3, env.deployer, {"data": data, "value": 0, "chainId": env.chain_id})

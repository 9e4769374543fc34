"""NodeRegistry accountability on anvil: the minimum bond, equivocation slashing, disputes resolved by
the arbitrator fixed at deployment, and the bond lock (open disputes, dispute window after the last
commit). Also the issue #1 attacks on the escrow earmarking and the #8 dataset rounding."""

from __future__ import annotations

import pytest

from chain.contract_types import DisputeResolved, NodeCondemned, NodeSlashed, VoucherRedeemed
from chain.eip712 import Receipt, Voucher, sign_receipt, sign_voucher

MIN_BOND = 10**18
DISPUTE_WINDOW = 86_400
DISPUTE_DEPOSIT = 10**17
THAW_SECONDS = 3600


def receipt(env, seq: int, salt: int = 0, node=None) -> Receipt:
    return Receipt(
        request_id=salt.to_bytes(32, "big"),
        payer=env.payer.address,
        node=(node or env.node).address,
        adapter_id=0,
        seq=seq,
        prompt_tokens=10,
        completion_tokens=5,
        compute_cost=15,
        adapter_cost=0,
        output_hash=bytes(32),
        attribution_hash=bytes(32),
        timestamp=1_700_000_000,
    )


def sign(env, r: Receipt, key=None) -> bytes:
    return sign_receipt(r, key or env.node.key, env.chain_id, env.c.receipts.address)


def test_equivocation_slashes_the_bond_part_to_the_submitter(env, stake_node, reverts):
    c = env.c
    stake_node(env, env.node, 4 * MIN_BOND)
    a, b = receipt(env, 7, salt=1), receipt(env, 7, salt=2)
    before = c.token.balance_of(env.stranger.address)
    # not an equivocation: same receipt twice, different seqs, a signature by someone else
    with reverts("NodeRegistryNotEquivocation"):
        c.nodes.slash_equivocation(env.stranger, a, sign(env, a), a, sign(env, a))
    with reverts("NodeRegistryNotEquivocation"):
        c.nodes.slash_equivocation(env.stranger, a, sign(env, a), receipt(env, 8), sign(env, receipt(env, 8)))
    with reverts("NodeRegistryBadReceiptSignature", env.node.address):
        c.nodes.slash_equivocation(env.stranger, a, sign(env, a), b, sign(env, b, key=env.stranger.key))
    with reverts("NodeRegistryBadReceiptSignature", env.node.address):
        c.nodes.slash_equivocation(env.stranger, a, b"\x00" * 65, b, sign(env, b))
    r = c.nodes.slash_equivocation(env.stranger, a, sign(env, a), b, sign(env, b))
    ev = [e for e in c.events_of(r) if isinstance(e, NodeSlashed)][0]
    assert (ev.node, ev.beneficiary, ev.amount, ev.reward) == (env.node.address, env.stranger.address, 4 * MIN_BOND, 2 * MIN_BOND)
    assert c.token.balance_of(env.stranger.address) - before == 2 * MIN_BOND
    assert c.nodes.burned() == 2 * MIN_BOND and c.nodes.get_node(env.node.address).bond == 0
    assert not c.nodes.can_redeem(env.node.address)
    with reverts("NodeRegistryNoBond", env.node.address):  # nothing left to slash twice
        c.nodes.slash_equivocation(env.stranger, a, sign(env, a), b, sign(env, b))
    # a slashed node can no longer redeem what payers deposited for it
    c.escrow.deposit(env.payer, env.node.address, 100)
    v = Voucher(env.payer.address, env.node.address, 0, 100, 0)
    with reverts("UsageEscrowNodeNotStaked", env.node.address):
        c.escrow.redeem(env.node, [v], [sign_voucher(v, env.payer.key, env.chain_id, c.escrow.address)])


def test_dispute_upheld_rejected_and_expired(env, stake_node, anvil, reverts):
    c = env.c
    stake_node(env, env.node, 2 * MIN_BOND)
    r1, r2, r3 = receipt(env, 1), receipt(env, 2), receipt(env, 3)
    with reverts("NodeRegistryBadReceiptSignature", env.node.address):
        c.nodes.open_dispute(env.stranger, r1, sign(env, r1, key=env.stranger.key))
    with reverts("NodeRegistryNoBond", env.payer.address):  # a receipt of an unbonded node
        bogus = receipt(env, 1, node=env.payer)
        c.nodes.open_dispute(env.stranger, bogus, sign(env, bogus, key=env.payer.key))
    fisher0 = c.token.balance_of(env.stranger.address)
    for r in (r1, r2, r3):
        c.nodes.open_dispute(env.stranger, r, sign(env, r))
    assert c.token.balance_of(env.stranger.address) == fisher0 - 3 * DISPUTE_DEPOSIT
    assert c.nodes.open_disputes(env.node.address) == 3
    d1 = c.nodes.get_dispute(1)
    assert d1.open and d1.node == env.node.address and d1.receipt_digest == c.receipts.hash_receipt(r1)
    with reverts("NodeRegistryNotArbitrator", env.stranger.address):
        c.nodes.resolve_dispute(env.stranger, 1, MIN_BOND)
    with reverts("NodeRegistryDisputeDeadline", d1.deadline):  # not expired yet
        c.nodes.expire_dispute(env.stranger, 1)
    # upheld: half the slash to the fisherman, its deposit back
    c.nodes.resolve_dispute(env.deployer, 1, MIN_BOND)
    assert c.token.balance_of(env.stranger.address) == fisher0 - 2 * DISPUTE_DEPOSIT + MIN_BOND // 2
    assert c.nodes.get_node(env.node.address).bond == MIN_BOND
    with reverts("NodeRegistryDisputeClosed", 1):
        c.nodes.resolve_dispute(env.deployer, 1, 1)
    # rejected: the deposit goes to the node
    node0 = c.token.balance_of(env.node.address)
    c.nodes.resolve_dispute(env.deployer, 2, 0)
    assert c.token.balance_of(env.node.address) == node0 + DISPUTE_DEPOSIT
    # expired: the arbitrator missed the deadline; anyone closes it, the deposit returns
    env.mine_time(DISPUTE_WINDOW + 1, anvil.rpc)
    with reverts("NodeRegistryDisputeDeadline", c.nodes.get_dispute(3).deadline):
        c.nodes.resolve_dispute(env.deployer, 3, MIN_BOND)
    c.nodes.expire_dispute(env.payer, 3)
    assert c.token.balance_of(env.stranger.address) == fisher0 - DISPUTE_DEPOSIT + MIN_BOND // 2
    assert c.nodes.open_disputes(env.node.address) == 0
    with reverts("NodeRegistryDisputeClosed", 99):
        c.nodes.expire_dispute(env.payer, 99)


def test_a_colluders_proof_cannot_empty_the_bond_before_open_disputes_are_ruled(env, stake_node, reverts):
    """Attack: a node facing a dispute it will lose has a colluder submit its own equivocation first,
    to take half of the bond back (and burn the rest) before the arbitrator can slash it for the
    fisherman. The proof must only condemn the bond: the open disputes are paid from it first, and
    the prover gets its share of what is left when the last of them closes."""
    c = env.c
    stake_node(env, env.node, MIN_BOND)
    disputed = receipt(env, 1)
    fisher0 = c.token.balance_of(env.stranger.address)
    c.nodes.open_dispute(env.stranger, disputed, sign(env, disputed))
    colluder0 = c.token.balance_of(env.payer.address)
    a, b = receipt(env, 9, salt=1), receipt(env, 9, salt=2)
    r = c.nodes.slash_equivocation(env.payer, a, sign(env, a), b, sign(env, b))  # the colluder
    [ev] = [e for e in c.events_of(r) if isinstance(e, NodeCondemned)]
    assert (ev.node, ev.beneficiary, ev.open_disputes) == (env.node.address, env.payer.address, 1)
    assert ev.until == DISPUTE_WINDOW  # the node never committed: its window is long over
    assert c.token.balance_of(env.payer.address) == colluder0  # nothing paid yet
    info = c.nodes.get_node(env.node.address)
    assert (info.bond, info.condemned, info.condemned_by) == (MIN_BOND, True, env.payer.address)
    assert not c.nodes.can_redeem(env.node.address)  # a condemned node redeems nothing more
    with reverts("NodeRegistryCondemned", env.node.address):  # its fault is proven once
        c.nodes.slash_equivocation(env.stranger, a, sign(env, a), b, sign(env, b))
    with reverts("NodeRegistryCondemned", env.node.address):  # its window is over: no new dispute
        c.nodes.open_dispute(env.stranger, receipt(env, 2), sign(env, receipt(env, 2)))
    with reverts("NodeRegistryCondemned", env.node.address):  # no bond added to a condemned one
        c.nodes.add_bond(env.node, 1)
    c.nodes.resolve_dispute(env.deployer, 1, MIN_BOND // 2)  # upheld: half the bond, the fisherman first
    assert c.token.balance_of(env.stranger.address) == fisher0 + MIN_BOND // 4  # deposit back + its reward
    # the last dispute closed: the condemned rest is slashed, the prover rewarded from it
    assert c.token.balance_of(env.payer.address) == colluder0 + MIN_BOND // 4
    info = c.nodes.get_node(env.node.address)
    assert (info.bond, info.condemned, info.condemned_by, info.condemned_until) == (0, False, "0x" + "00" * 20, 0)
    assert c.nodes.burned() == MIN_BOND // 2
    assert c.nodes.open_disputes(env.node.address) == 0


def test_a_proof_within_the_dispute_window_waits_for_the_fishermen(env, stake_node, anvil, reverts):
    """Attack: a node that just committed receipts it knows are disputable has a colluder prove its
    own equivocation before any fisherman disputes them, to take half of its bond back at once. The
    proof only condemns the bond until the dispute window after the last commit ends: fishermen may
    still dispute meanwhile and are paid first; then anyone executes the condemnation."""
    c = env.c
    stake_node(env, env.node, MIN_BOND)
    c.receipts.commit_batch(env.node, 1, b"\x01" * 32, 1, "bafyreceipts")
    until = c.receipts.last_commit_at(env.node.address) + DISPUTE_WINDOW
    prover0 = c.token.balance_of(env.payer.address)
    a, b = receipt(env, 9, salt=1), receipt(env, 9, salt=2)
    r = c.nodes.slash_equivocation(env.payer, a, sign(env, a), b, sign(env, b))  # no dispute open yet
    [ev] = [e for e in c.events_of(r) if isinstance(e, NodeCondemned)]
    assert (ev.open_disputes, ev.until) == (0, until) and c.nodes.get_node(env.node.address).condemned_until == until
    assert c.token.balance_of(env.payer.address) == prover0 and not c.nodes.can_redeem(env.node.address)
    with reverts("NodeRegistryCondemnationPending", env.node.address, until, 0):  # not before the window ends
        c.nodes.execute_condemnation(env.stranger, env.node.address)
    c.nodes.deregister(env.node)
    fisher0 = c.token.balance_of(env.stranger.address)
    c.nodes.open_dispute(env.stranger, receipt(env, 1), sign(env, receipt(env, 1)))  # still within the window
    c.nodes.resolve_dispute(env.deployer, 1, MIN_BOND // 2)  # paid from the condemned bond
    assert c.token.balance_of(env.stranger.address) == fisher0 + MIN_BOND // 4
    assert c.nodes.get_node(env.node.address).condemned  # the window still runs
    env.mine_time(DISPUTE_WINDOW + 1, anvil.rpc)
    with reverts("NodeRegistryCondemned", env.node.address):  # too late for a new dispute
        c.nodes.open_dispute(env.stranger, receipt(env, 2), sign(env, receipt(env, 2)))
    with reverts("NodeRegistryCondemned", env.node.address):  # unbonded and out of its window, still held
        c.nodes.withdraw_bond(env.node)
    r = c.nodes.execute_condemnation(env.stranger, env.node.address)  # anyone
    [ev] = [e for e in c.events_of(r) if isinstance(e, NodeSlashed)]
    assert (ev.beneficiary, ev.amount, ev.reward) == (env.payer.address, MIN_BOND // 2, MIN_BOND // 4)
    assert c.token.balance_of(env.payer.address) == prover0 + MIN_BOND // 4
    assert c.nodes.get_node(env.node.address).bond == 0 and not c.nodes.get_node(env.node.address).condemned
    with reverts("NodeRegistryCondemnationPending", env.node.address, 0, 0):  # once
        c.nodes.execute_condemnation(env.stranger, env.node.address)


def test_a_condemned_bond_is_slashed_when_the_last_open_dispute_closes(env, stake_node, anvil):
    """Two disputes open when the equivocation is proven: rejecting the first leaves the bond
    condemned; letting the second expire closes the last one, and the whole bond is slashed then."""
    c = env.c
    stake_node(env, env.node, MIN_BOND)
    for seq in (1, 2):
        c.nodes.open_dispute(env.stranger, receipt(env, seq), sign(env, receipt(env, seq)))
    prover0 = c.token.balance_of(env.payer.address)
    a, b = receipt(env, 9, salt=1), receipt(env, 9, salt=2)
    c.nodes.slash_equivocation(env.payer, a, sign(env, a), b, sign(env, b))
    c.nodes.resolve_dispute(env.deployer, 1, 0)  # rejected: one dispute still open
    assert c.nodes.get_node(env.node.address).condemned and c.nodes.get_node(env.node.address).bond == MIN_BOND
    assert c.token.balance_of(env.payer.address) == prover0
    env.mine_time(DISPUTE_WINDOW + 1, anvil.rpc)
    r = c.nodes.expire_dispute(env.stranger, 2)
    [ev] = [e for e in c.events_of(r) if isinstance(e, NodeSlashed)]
    assert (ev.beneficiary, ev.amount, ev.reward) == (env.payer.address, MIN_BOND, MIN_BOND // 2)
    assert c.token.balance_of(env.payer.address) == prover0 + MIN_BOND // 2
    info = c.nodes.get_node(env.node.address)
    assert (info.bond, info.condemned) == (0, False)
    c.nodes.add_bond(env.node, MIN_BOND)  # no longer condemned: it may bond again
    assert c.nodes.can_redeem(env.node.address)


def test_an_upheld_dispute_refunds_the_fisherman_even_when_the_bond_is_gone(env, stake_node):
    """A node facing two disputes loses its whole bond to the first; the second, upheld, finds nothing
    left to slash and must still return its fisherman's deposit, not pay it to the node."""
    c = env.c
    stake_node(env, env.node, MIN_BOND)
    fisher0 = c.token.balance_of(env.stranger.address)
    for seq in (1, 2):
        c.nodes.open_dispute(env.stranger, receipt(env, seq), sign(env, receipt(env, seq)))
    c.nodes.resolve_dispute(env.deployer, 1, MIN_BOND)
    assert c.nodes.get_node(env.node.address).bond == 0
    node0 = c.token.balance_of(env.node.address)
    r = c.nodes.resolve_dispute(env.deployer, 2, MIN_BOND)  # upheld, nothing left to slash
    [ev] = [e for e in c.events_of(r) if isinstance(e, DisputeResolved)]
    assert (ev.dispute_id, ev.upheld, ev.slashed) == (2, True, 0)
    assert c.token.balance_of(env.stranger.address) == fisher0 + MIN_BOND // 2  # both deposits back, one reward
    assert c.token.balance_of(env.node.address) == node0
    assert not c.nodes.get_dispute(2).open and c.nodes.open_disputes(env.node.address) == 0


def test_bond_locked_by_open_dispute_and_dispute_window(env, stake_node, anvil, reverts):
    c = env.c
    stake_node(env, env.node, MIN_BOND)
    c.receipts.commit_batch(env.node, 1, b"\x01" * 32, 1, "bafyreceipts")
    r = receipt(env, 1)
    c.nodes.open_dispute(env.stranger, r, sign(env, r))
    c.nodes.deregister(env.node)
    env.mine_time(THAW_SECONDS, anvil.rpc)  # unbonding over (the registry's unbonding period = thaw)
    with reverts("NodeRegistryDisputeOpen", env.node.address, 1):
        c.nodes.withdraw_bond(env.node)
    c.nodes.resolve_dispute(env.deployer, 1, 0)
    commit_at = c.receipts.last_commit_at(env.node.address)
    with reverts("NodeRegistryStillUnbonding", commit_at + DISPUTE_WINDOW):  # within the dispute window
        c.nodes.withdraw_bond(env.node)
    env.mine_time(DISPUTE_WINDOW, anvil.rpc)
    c.nodes.withdraw_bond(env.node)
    assert c.nodes.get_node(env.node.address).bond == 0


def test_issue1_payer_cannot_drain_what_it_deposited_for_a_node(env, world, stake_node, reverts):
    """Issue #1: the payer signs a voucher naming itself (or a node it runs and bonds) as node and
    redeems it. Funds are earmarked per (payer, node): it takes nothing deposited for the honest
    node, whose vouchers still pay in full."""
    c = env.c
    p = env.payer
    v_self = Voucher(p.address, p.address, 0, 10**21, 0)
    with reverts("UsageEscrowNodeNotStaked", p.address):  # an unregistered address cannot redeem at all
        c.escrow.redeem(p, [v_self], [sign_voucher(v_self, p.key, env.chain_id, c.escrow.address)])
    stake_node(env, p)  # the payer registers and bonds a node of its own
    r = c.escrow.redeem(p, [v_self], [sign_voucher(v_self, p.key, env.chain_id, c.escrow.address)])
    assert not [e for e in c.events_of(r) if isinstance(e, VoucherRedeemed)]
    assert c.vault.claimable(p.address) == 0
    assert c.escrow.account_of(p.address, env.node.address).balance == 10**21
    honest = Voucher(p.address, env.node.address, 0, 10**20, 0)
    c.escrow.redeem(env.node, [honest], [sign_voucher(honest, p.key, env.chain_id, c.escrow.address)])
    assert c.vault.claimable(env.node.address) == 10**20


def test_issue8_late_contributions_never_over_credited(env, stake_node):
    """Issue #8: with rewardDebt rounded down, a contribution accepted after odd payments was
    credited a unit paid before it, and the last claim reverted. Now Σ claimable ≤ vault balance."""
    c = env.c
    c.datasets.create_dataset(env.curator, "d", "MIT", "")
    c.adapters.register(env.owner, "m", "bafyA", 8, 1, 0, [1], [10_000])  # all of the rest to the dataset
    stake_node(env, env.node)
    c.escrow.deposit(env.payer, env.node.address, 10**18)
    total = 0
    ids = []
    for k, (weight, pay) in enumerate([(3, 7), (7, 11), (11, 13), (13, 1), (17, 29), (19, 3)]):
        c.datasets.contribute(env.contributor if k % 2 else env.contributor2, 1, f"bafy{k}", weight)
        ids.append(k + 1)
        c.datasets.accept(env.curator, k + 1, weight)
        total += pay
        v = Voucher(env.payer.address, env.node.address, 1, 0, total)
        c.escrow.redeem(env.node, [v], [sign_voucher(v, env.payer.key, env.chain_id, c.escrow.address)])
        # the dataset part waits in the node's AttributionPool until a committed batch settles it:
        # all unattributed here, so it goes into the accumulator (issue 13)
        seq = c.receipts.last_seq(env.node.address) + 1
        c.receipts.commit_batch(env.node, seq, seq.to_bytes(32, "big"), 1, "bafy-receipts")
        c.pool.settle(env.node, seq, [(1, 0, 1)])
        c.datasets.harvest(env.stranger, ids)
    assert c.pool.pool_of(env.node.address, 1).balance == 0
    # accepted now (its debt rounded up above what has accrued) and rejected at once: owed nothing, no revert
    c.datasets.contribute(env.contributor, 1, "bafy-late", 23)
    late = len(ids) + 1
    c.datasets.accept(env.curator, late, 23)
    assert c.datasets.pending_reward(late) == 0
    c.datasets.reject(env.curator, late)
    vault = c.token.balance_of(c.vault.address)
    assert c.vault.total_claimable() + sum(c.datasets.pending_reward(i) for i in ids) <= vault
    for who in (env.contributor, env.contributor2, env.owner, env.deployer, env.curator):
        if c.vault.claimable(who.address):
            c.vault.claim(who)  # every claim succeeds, including the last
    assert c.vault.total_claimable() == 0


@pytest.mark.parametrize("bond", [MIN_BOND - 1, MIN_BOND])
def test_can_redeem_needs_the_minimum_bond(env, stake_node, bond):
    stake_node(env, env.stranger, bond)
    assert env.c.nodes.can_redeem(env.stranger.address) == (bond >= MIN_BOND)

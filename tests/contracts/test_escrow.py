"""UsageEscrow against a real anvil: deposits, signers, thawing, redemption and its attacks."""

from __future__ import annotations

import random

import pytest
from eth_account import Account

from chain.contract_types import SKIP_REASONS, SignerInfo, VoucherRedeemed, VoucherSkipped, VoucherUnderfunded
from chain.eip712 import Voucher, sign_signer_proof, sign_voucher, signer_proof_digest, voucher_digest

THAW_SECONDS = 3600  # tests/contracts/conftest.py deploys with it

BPS = 10_000


def signed(env, v: Voucher, key=None, chain_id=None, escrow=None) -> bytes:
    return sign_voucher(v, key or env.payer.key, chain_id or env.chain_id, escrow or env.c.escrow.address)


def skipped(c, receipt) -> list[tuple[int, str]]:
    """(index, reason) of every VoucherSkipped event of a redeem."""
    return [(e.index, SKIP_REASONS[e.reason]) for e in c.events_of(receipt) if isinstance(e, VoucherSkipped)]


def test_deposit_and_deposit_for(env):
    c = env.c
    node = env.node.address
    before = c.token.balance_of(env.payer.address)
    r = c.escrow.deposit(env.payer, node, 500)
    assert c.escrow.account_of(env.payer.address, node).balance == 500
    assert c.escrow.account_of(env.payer.address, env.stranger.address).balance == 0  # earmarked
    assert c.token.balance_of(env.payer.address) == before - 500
    ev = [e for e in c.events_of(r) if type(e).__name__ == "Deposited"][0]
    assert (ev.payer, ev.node, ev.from_, ev.amount) == (env.payer.address, node, env.payer.address, 500)
    c.escrow.deposit_for(env.stranger, env.payer.address, node, 70)
    assert c.escrow.account_of(env.payer.address, node).balance == 570
    assert c.token.balance_of(c.escrow.address) == 570


def test_deposit_errors(env, reverts):
    c = env.c
    node, zero = env.node.address, "0x" + "00" * 20
    with reverts("UsageEscrowZeroAmount"):
        c.escrow.deposit(env.payer, node, 0)
    with reverts("UsageEscrowZeroAddress"):
        c.escrow.deposit_for(env.payer, zero, node, 5)
    with reverts("UsageEscrowZeroAddress"):
        c.escrow.deposit(env.payer, zero, 5)
    with reverts("ERC20InsufficientBalance"):
        c.escrow.deposit(env.payer, node, 10**30)  # more than minted: the token's own error bubbles
    # a balance above 2^128 - 1 cannot be stored
    c.token.mint(env.deployer, env.payer.address, 2**128)
    c.escrow.deposit(env.payer, node, 2**128 - 1)
    with reverts("UsageEscrowValueTooLarge", 0):
        c.escrow.deposit(env.payer, node, 1)


def test_signer_authorization_needs_the_signers_proof(env, anvil, reverts):
    c = env.c
    zero = "0x" + "00" * 20
    deadline = 2**40
    proof = sign_signer_proof(env.payer.address, deadline, 0, env.signer.key, env.chain_id, c.escrow.address)
    assert c.escrow.hash_signer_proof(env.payer.address, deadline, 0) == signer_proof_digest(
        env.payer.address, deadline, 0, env.chain_id, c.escrow.address
    )
    # attack (issue #6): squatting a key one does not hold, or replaying its proof for another payer
    own = sign_signer_proof(env.payer2.address, deadline, 0, env.payer2.key, env.chain_id, c.escrow.address)
    with reverts("UsageEscrowBadSignerProof", env.signer.address):
        c.escrow.authorize_signer(env.payer2, env.signer.address, deadline, own)
    with reverts("UsageEscrowBadSignerProof", env.signer.address):
        c.escrow.authorize_signer(env.payer2, env.signer.address, deadline, proof)
    other_chain = sign_signer_proof(env.payer.address, deadline, 0, env.signer.key, env.chain_id + 1, c.escrow.address)
    with reverts("UsageEscrowBadSignerProof", env.signer.address):
        c.escrow.authorize_signer(env.payer, env.signer.address, deadline, other_chain)
    with reverts("UsageEscrowBadSignerProof", env.signer.address):  # expired proof
        c.escrow.authorize_signer(
            env.payer,
            env.signer.address,
            1,
            sign_signer_proof(env.payer.address, 1, 0, env.signer.key, env.chain_id, c.escrow.address),
        )
    with reverts("UsageEscrowBadSignerProof", env.signer.address):  # garbage proof
        c.escrow.authorize_signer(env.payer, env.signer.address, deadline, b"\x01" * 7)
    with reverts("UsageEscrowZeroAddress"):
        c.escrow.authorize_signer(env.payer, zero, deadline, proof)
    c.escrow.authorize_signer(env.payer, env.signer.address, deadline, proof)
    assert c.escrow.signer_of(env.signer.address) == SignerInfo(env.payer.address, 0, 1)
    assert c.escrow.is_authorized(env.payer.address, env.signer.address)
    with reverts("UsageEscrowSignerTaken", env.signer.address, env.payer.address):
        c.escrow.authorize_signer_key(env.payer2, env.signer)
    with reverts("UsageEscrowNotYourSigner", env.signer.address):
        c.escrow.revoke_signer(env.payer2, env.signer.address)
    r = c.escrow.revoke_signer(env.payer, env.signer.address)
    revoke_at = [e for e in c.events_of(r) if type(e).__name__ == "SignerRevoked"][0].revoke_at
    assert c.escrow.signer_of(env.signer.address) == SignerInfo(env.payer.address, revoke_at, 1)
    # still authorized during the revocation thaw, and nobody can take the key meanwhile
    assert c.escrow.is_authorized(env.payer.address, env.signer.address)
    with reverts("UsageEscrowNotYourSigner", env.signer.address):
        c.escrow.revoke_signer(env.payer, env.signer.address)  # a second revoke must not restart the clock
    with reverts("UsageEscrowSignerTaken", env.signer.address, env.payer.address):
        c.escrow.authorize_signer_key(env.payer2, env.signer)
    env.mine_time(THAW_SECONDS, anvil.rpc)
    assert not c.escrow.is_authorized(env.payer.address, env.signer.address)
    c.escrow.authorize_signer_key(env.payer2, env.signer)  # free again, with a proof for the new payer
    assert c.escrow.signer_of(env.signer.address) == SignerInfo(env.payer2.address, 0, 2)


def test_thaw_and_withdraw(env, anvil, reverts):
    c = env.c
    node = env.node.address
    c.escrow.deposit(env.payer, node, 1000)
    with reverts("UsageEscrowNothingThawing", env.payer.address, node):
        c.escrow.withdraw(env.payer, node)
    with reverts("UsageEscrowZeroAmount"):
        c.escrow.start_thaw(env.payer, node, 0)
    with reverts("UsageEscrowInsufficientBalance", 1000, 1001):
        c.escrow.start_thaw(env.payer, node, 1001)
    with reverts("UsageEscrowInsufficientBalance", 0, 1):  # nothing earmarked for another node
        c.escrow.start_thaw(env.payer, env.stranger.address, 1)
    c.escrow.start_thaw(env.payer, node, 400)
    acct = c.escrow.account_of(env.payer.address, node)
    assert acct.thawing == 400 and acct.thaw_end > 0
    # attack: withdrawal before the thawing period ends
    with reverts("UsageEscrowStillThawing", acct.thaw_end):
        c.escrow.withdraw(env.payer, node)
    env.mine_time(c.escrow.thaw_seconds(), anvil.rpc)
    before = c.token.balance_of(env.payer.address)
    c.escrow.withdraw(env.payer, node)
    assert c.token.balance_of(env.payer.address) == before + 400
    assert c.escrow.account_of(env.payer.address, node) == type(acct)(600, 0, 0)


def test_withdraw_capped_by_redemptions_during_thaw(env, world, anvil):
    c = env.c
    node = env.node.address
    c.escrow.start_thaw(env.payer, node, 10**21)  # everything
    v = Voucher(env.payer.address, node, 0, 10**20, 0)
    c.escrow.redeem(env.node, [v], [signed(env, v)])  # the node still collects while thawing
    env.mine_time(c.escrow.thaw_seconds(), anvil.rpc)
    before = c.token.balance_of(env.payer.address)
    c.escrow.withdraw(env.payer, node)
    assert c.token.balance_of(env.payer.address) - before == 10**21 - 10**20
    assert c.escrow.account_of(env.payer.address, node).balance == 0


def test_redeem_splits_exactly(env, world):
    c = env.c
    compute, adapter = 7 * 10**18, 3 * 10**18 + 7  # odd amount: rounding dust goes to the owner
    v = Voucher(env.payer.address, env.node.address, world["adapter"], compute, adapter)
    fee_recipient = c.escrow.protocol_fee().recipient
    before = {a: c.vault.claimable(a) for a in (env.node.address, env.owner.address, fee_recipient)}
    r = c.escrow.redeem(env.node, [v], [signed(env, v)])
    fee = adapter * 500 // BPS
    rest = adapter - fee
    ds = rest * 4000 // BPS
    assert c.vault.claimable(env.node.address) - before[env.node.address] == compute
    assert c.vault.claimable(fee_recipient) - before[fee_recipient] == fee
    assert c.vault.claimable(env.owner.address) - before[env.owner.address] == rest - ds
    # the dataset share splits 1:3 over the two accepted contributions
    assert c.datasets.pending_reward(1) + c.datasets.pending_reward(2) <= ds
    assert (
        c.datasets.pending_reward(2) == 3 * c.datasets.pending_reward(1)
        or abs(c.datasets.pending_reward(2) - 3 * c.datasets.pending_reward(1)) <= 3
    )
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == 10**21 - compute - adapter
    assert c.escrow.collected(env.payer.address, env.node.address, 1) == type(
        c.escrow.collected(env.payer.address, env.node.address, 1)
    )(compute, adapter)
    redeemed = [e for e in c.events_of(r) if isinstance(e, VoucherRedeemed)]
    assert [(e.compute_paid, e.adapter_paid) for e in redeemed] == [(compute, adapter)]
    assert c.token.balance_of(c.vault.address) == compute + adapter


def test_redeem_pays_only_the_increase_and_replay_pays_nothing(env, world):
    c = env.c
    v1 = Voucher(env.payer.address, env.node.address, 1, 100, 50)
    c.escrow.redeem(env.node, [v1], [signed(env, v1)])
    bal = c.escrow.account_of(env.payer.address, env.node.address).balance
    # replay: same voucher again pays nothing and does not revert
    r = c.escrow.redeem(env.node, [v1], [signed(env, v1)])
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == bal
    assert not [e for e in c.events_of(r) if isinstance(e, VoucherRedeemed)]
    # a later voucher pays only the increase
    v2 = Voucher(env.payer.address, env.node.address, 1, 160, 80)
    c.escrow.redeem(env.node, [v2], [signed(env, v2)])
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == bal - 60 - 30
    # attack: a lowered cumulative value pays nothing, and so does a partly lowered one (issue #7)
    v_low = Voucher(env.payer.address, env.node.address, 1, 10, 10)
    v_mixed = Voucher(env.payer.address, env.node.address, 1, 150, 100)
    r = c.escrow.redeem(env.node, [v_low, v_mixed], [signed(env, v_low), signed(env, v_mixed)])
    assert skipped(c, r) == [(0, "stale"), (1, "stale")]
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == bal - 90
    col = c.escrow.collected(env.payer.address, env.node.address, 1)
    assert (col.compute, col.adapter) == (160, 80)


def test_redeem_many_lanes_in_one_call(env, world):
    c = env.c
    c.escrow.deposit(env.payer2, env.node.address, 10**20)
    vs = [
        Voucher(env.payer.address, env.node.address, 0, 11, 0),
        Voucher(env.payer.address, env.node.address, 1, 12, 13),
        Voucher(env.payer2.address, env.node.address, 1, 14, 15),
    ]
    sigs = [signed(env, vs[0]), signed(env, vs[1]), signed(env, vs[2], key=env.payer2.key)]
    c.escrow.redeem(env.node, vs, sigs)
    assert c.escrow.collected(env.payer2.address, env.node.address, 1).adapter == 15
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == 10**21 - 36
    assert c.token.balance_of(c.vault.address) == 11 + 12 + 13 + 14 + 15


def test_revoked_signer_thaws_then_stops(env, world, anvil):
    """Issue #4: vouchers signed before a revocation stay redeemable until its thaw ends."""
    c = env.c
    c.escrow.authorize_signer_key(env.payer, env.signer)
    v = Voucher(env.payer.address, env.node.address, 1, 5, 5)
    c.escrow.redeem(env.node, [v], [signed(env, v, key=env.signer.key)])
    v2 = Voucher(env.payer.address, env.node.address, 1, 9, 9)
    sig2 = signed(env, v2, key=env.signer.key)  # signed before the revocation
    c.escrow.revoke_signer(env.payer, env.signer.address)
    snap = anvil.rpc("evm_snapshot")
    r = c.escrow.redeem(env.node, [v2], [sig2])
    assert [(e.compute_paid, e.adapter_paid) for e in c.events_of(r) if isinstance(e, VoucherRedeemed)] == [(4, 4)]
    anvil.rpc("evm_revert", [snap])
    env.mine_time(THAW_SECONDS, anvil.rpc)
    r = c.escrow.redeem(env.node, [v2], [sig2])
    assert skipped(c, r) == [(0, "unauthorized_signer")]
    assert c.escrow.collected(env.payer.address, env.node.address, 1).compute == 5


def test_unauthorized_signer_is_skipped(env, world):
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 10**18, 0)
    # attack: the node signs a voucher drawing on the payer's escrow
    r = c.escrow.redeem(env.node, [v], [signed(env, v, key=env.node.key)])
    assert skipped(c, r) == [(0, "unauthorized_signer")]
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == 10**21


@pytest.mark.parametrize("domain", ["chain", "contract"])
def test_voucher_for_another_domain_pays_nothing(env, world, domain):
    """A voucher signed for another chain id or another escrow contract recovers to a random
    address, which is not authorized: it can never pay here."""
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 10**18, 0)
    sig = signed(env, v, chain_id=env.chain_id + 1) if domain == "chain" else signed(env, v, escrow=c.receipts.address)
    r = c.escrow.redeem(env.node, [v], [sig])
    assert skipped(c, r) == [(0, "unauthorized_signer")]
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == 10**21


def test_redeem_validation(env, world, reverts):
    """Batch shape errors revert; every bad voucher is skipped with its reason and never stops the
    good one in the same batch (issue #4)."""
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 1, 1)
    sig = signed(env, v)
    with reverts("UsageEscrowBadBatch", 0, 0):
        c.escrow.redeem(env.node, [], [])
    with reverts("UsageEscrowBadBatch", 1, 2):
        c.escrow.redeem(env.node, [v], [sig, sig])
    other = Voucher(env.payer.address, env.stranger.address, 1, 1, 1)
    base = Voucher(env.payer.address, env.node.address, 0, 1, 1)
    unknown = Voucher(env.payer.address, env.node.address, 99, 1, 1)
    huge = Voucher(env.payer.address, env.node.address, 1, 2**128, 0)
    bad_s = sig[:32] + (2**256 - 1).to_bytes(32, "big") + sig[64:]
    good = Voucher(env.payer.address, env.node.address, 1, 7, 3)
    batch = [other, base, unknown, huge, v, v, good]
    sigs = [signed(env, other), signed(env, base), signed(env, unknown), signed(env, huge), sig[:64], bad_s, signed(env, good)]
    r = c.escrow.redeem(env.node, batch, sigs)
    assert skipped(c, r) == [
        (0, "wrong_node"),
        (1, "bad_value"),
        (2, "unknown_adapter"),
        (3, "bad_value"),
        (4, "bad_signature"),
        (5, "bad_signature"),
    ]
    assert [(e.compute_paid, e.adapter_paid) for e in c.events_of(r) if isinstance(e, VoucherRedeemed)] == [(7, 3)]
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == 10**21 - 10


def test_only_a_staked_node_redeems(env, world, reverts, stake_node):
    c = env.c
    v = Voucher(env.payer.address, env.stranger.address, 0, 1, 0)
    with reverts("UsageEscrowNodeNotStaked", env.stranger.address):
        c.escrow.redeem(env.stranger, [v], [signed(env, v)])
    stake_node(env, env.stranger, bond=10**18 - 1)  # below the minimum bond
    with reverts("UsageEscrowNodeNotStaked", env.stranger.address):
        c.escrow.redeem(env.stranger, [v], [signed(env, v)])
    c.nodes.add_bond(env.stranger, 1)
    assert c.nodes.can_redeem(env.stranger.address)
    assert c.escrow.redeem(env.stranger, [v], [signed(env, v)])["status"] == 1  # nothing earmarked: pays 0


def test_underfunded_voucher_pays_what_is_there(env, world):
    """min(increase, available), pro rata over compute and adapter; the rest is collected by the same
    voucher after a deposit."""
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 3 * 10**21, 10**21)
    r = c.escrow.redeem(env.node, [v], [signed(env, v)])
    under = [e for e in c.events_of(r) if isinstance(e, VoucherUnderfunded)]
    assert [(e.needed, e.available) for e in under] == [(4 * 10**21, 10**21)]
    col = c.escrow.collected(env.payer.address, env.node.address, 1)
    assert (col.compute, col.adapter) == (75 * 10**19, 25 * 10**19)
    assert c.escrow.account_of(env.payer.address, env.node.address).balance == 0
    r = c.escrow.redeem(env.node, [v], [signed(env, v)])  # nothing left: pays nothing, lane unchanged
    assert c.escrow.collected(env.payer.address, env.node.address, 1) == col
    c.escrow.deposit(env.payer, env.node.address, 3 * 10**21)
    c.escrow.redeem(env.node, [v], [signed(env, v)])
    col = c.escrow.collected(env.payer.address, env.node.address, 1)
    assert (col.compute, col.adapter) == (3 * 10**21, 10**21)
    assert c.token.balance_of(c.vault.address) == 4 * 10**21


def test_protocol_fee_change_is_delayed_and_ownership_two_step(env, world, anvil, reverts):
    c = env.c
    assert c.escrow.protocol_fee().bps == 500
    assert c.escrow.owner() == env.deployer.address
    with reverts("OwnableUnauthorizedAccount", env.stranger.address):
        c.escrow.propose_protocol_fee(env.stranger, env.stranger.address, 10)
    with reverts("UsageEscrowFeeTooHigh", 1001):
        c.escrow.propose_protocol_fee(env.deployer, env.stranger.address, 1001)
    with reverts("UsageEscrowZeroAddress"):
        c.escrow.propose_protocol_fee(env.deployer, "0x" + "00" * 20, 10)
    with reverts("UsageEscrowFeeNotReady", 0):
        c.escrow.apply_protocol_fee(env.stranger)
    c.escrow.propose_protocol_fee(env.deployer, env.stranger.address, 1000)
    _, _, at = c.escrow.pending_protocol_fee()
    # issue #10: vouchers already signed are redeemed under the fee in force until the delay passes
    with reverts("UsageEscrowFeeNotReady", at):
        c.escrow.apply_protocol_fee(env.stranger)
    v = Voucher(env.payer.address, env.node.address, 1, 0, 10_000)
    c.escrow.redeem(env.node, [v], [signed(env, v)])
    assert c.vault.claimable(env.stranger.address) == 0
    env.mine_time(THAW_SECONDS, anvil.rpc)
    c.escrow.apply_protocol_fee(env.stranger)  # anyone may apply it once due
    assert c.escrow.protocol_fee() == type(c.escrow.protocol_fee())(env.stranger.address, 1000)
    v2 = Voucher(env.payer.address, env.node.address, 1, 0, 20_000)
    c.escrow.redeem(env.node, [v2], [signed(env, v2)])
    assert c.vault.claimable(env.stranger.address) == 1000
    # two-step ownership: a typo'd owner never takes over
    c.escrow.transfer_ownership(env.deployer, env.stranger.address)
    assert c.escrow.owner() == env.deployer.address and c.escrow.pending_owner() == env.stranger.address
    with reverts("OwnableUnauthorizedAccount", env.payer.address):
        c.escrow.accept_ownership(env.payer)
    c.escrow.accept_ownership(env.stranger)
    assert c.escrow.owner() == env.stranger.address


def test_hash_voucher_matches_python_for_random_vouchers(env):
    rng = random.Random(1234)
    for _ in range(12):
        v = Voucher(
            Account.from_key(rng.randbytes(32)).address,
            Account.from_key(rng.randbytes(32)).address,
            rng.choice([0, 1, rng.getrandbits(256)]),
            rng.getrandbits(rng.choice([8, 128, 256])),
            rng.getrandbits(rng.choice([0, 64, 256])),
        )
        assert env.c.escrow.hash_voucher(v) == voucher_digest(v, env.chain_id, env.c.escrow.address)


def test_zero_payer_voucher_is_skipped(env, world):
    """A voucher naming the zero address as payer must not pass as 'signed by an unregistered key'."""
    zero = "0x" + "00" * 20
    v = Voucher(zero, env.node.address, 0, 1, 0)
    r = env.c.escrow.redeem(env.node, [v], [signed(env, v, key=env.stranger.key)])
    assert skipped(env.c, r) == [(0, "bad_value")]


def test_many_dataset_credits_in_one_call(env, stake_node):
    """Two adapters with ten datasets each, three vouchers: 30 dataset credits in one redeem, more
    than the initial in-memory capacity (16) and beyond the merge window: every share still lands."""
    c = env.c
    for i in range(20):
        c.datasets.create_dataset(env.curator, f"d{i}", "MIT", "")
        c.datasets.contribute(env.contributor, i + 1, f"bafy{i}", 10)
        c.datasets.accept(env.curator, i + 1, 1)  # one contribution of weight 1 per dataset
    c.adapters.register(env.owner, "m", "bafyA", 8, 1, 5000, list(range(1, 11)), [500] * 10)
    c.adapters.register(env.owner, "m", "bafyB", 8, 1, 5000, list(range(11, 21)), [500] * 10)
    stake_node(env, env.node)
    c.escrow.deposit(env.payer, env.node.address, 10**21)
    c.escrow.deposit(env.payer2, env.node.address, 10**21)
    vs = [
        Voucher(env.payer.address, env.node.address, 1, 0, 10**6),
        Voucher(env.payer.address, env.node.address, 2, 0, 10**6),
        Voucher(env.payer2.address, env.node.address, 1, 0, 10**6),
    ]
    sigs = [signed(env, vs[0]), signed(env, vs[1]), signed(env, vs[2], key=env.payer2.key)]
    c.escrow.redeem(env.node, vs, sigs)
    share = (10**6 - 10**6 * 500 // BPS) * 500 // BPS  # per dataset per voucher
    # dataset parts fill the node's attribution pools (paid out when the node settles a batch)
    assert [c.pool.pool_of(env.node.address, i).balance for i in range(1, 11)] == [2 * share] * 10
    assert [c.pool.pool_of(env.node.address, i).balance for i in range(11, 21)] == [share] * 10
    owner_part = 3 * ((10**6 - 10**6 * 500 // BPS) - 10 * share)
    assert c.vault.claimable(env.owner.address) == owner_part
    assert c.token.balance_of(c.vault.address) == 3 * 10**6


def test_a_signer_proof_authorizes_once(env, anvil, reverts):
    """Attack: the payer revokes its signer, then re-authorizes the key with the proof the key signed
    for the first authorization (its deadline not yet passed): the key never consented again. The proof
    names the key's authorization count, so it is spent by the authorization it was made for."""
    c = env.c
    deadline = 2**40
    nonce = c.escrow.signer_of(env.signer.address).nonce
    proof = sign_signer_proof(env.payer.address, deadline, nonce, env.signer.key, env.chain_id, c.escrow.address)
    c.escrow.authorize_signer(env.payer, env.signer.address, deadline, proof)
    assert c.escrow.signer_of(env.signer.address).nonce == nonce + 1
    c.escrow.revoke_signer(env.payer, env.signer.address)
    env.mine_time(THAW_SECONDS, anvil.rpc)
    assert not c.escrow.is_authorized(env.payer.address, env.signer.address)
    with reverts("UsageEscrowBadSignerProof", env.signer.address):  # the spent proof
        c.escrow.authorize_signer(env.payer, env.signer.address, deadline, proof)
    assert not c.escrow.is_authorized(env.payer.address, env.signer.address)
    fresh = sign_signer_proof(env.payer.address, deadline, nonce + 1, env.signer.key, env.chain_id, c.escrow.address)
    c.escrow.authorize_signer(env.payer, env.signer.address, deadline, fresh)  # the key consents again
    assert c.escrow.is_authorized(env.payer.address, env.signer.address)

"""UsageEscrow against a real anvil: deposits, signers, thawing, redemption and its attacks."""

from __future__ import annotations

import random

import pytest
from eth_account import Account

from chain.contracts import VoucherRedeemed, VoucherUnderfunded
from chain.eip712 import Voucher, sign_voucher, voucher_digest

BPS = 10_000


def signed(env, v: Voucher, key=None, chain_id=None, escrow=None) -> bytes:
    return sign_voucher(v, key or env.payer.key, chain_id or env.chain_id, escrow or env.c.escrow.address)


def test_deposit_and_deposit_for(env):
    c = env.c
    before = c.token.balance_of(env.payer.address)
    r = c.escrow.deposit(env.payer, 500)
    assert c.escrow.account_of(env.payer.address).balance == 500
    assert c.token.balance_of(env.payer.address) == before - 500
    ev = [e for e in c.events_of(r) if type(e).__name__ == "Deposited"][0]
    assert (ev.payer, ev.from_, ev.amount) == (env.payer.address, env.payer.address, 500)
    c.escrow.deposit_for(env.stranger, env.payer.address, 70)
    assert c.escrow.account_of(env.payer.address).balance == 570
    assert c.token.balance_of(c.escrow.address) == 570


def test_deposit_errors(env, reverts):
    c = env.c
    with reverts("UsageEscrowZeroAmount"):
        c.escrow.deposit(env.payer, 0)
    with reverts("UsageEscrowZeroAddress"):
        c.escrow.deposit_for(env.payer, "0x" + "00" * 20, 5)
    with reverts("ERC20InsufficientBalance"):
        c.escrow.deposit(env.payer, 10**30)  # more than minted: the token's own error bubbles
    # a balance above 2^128 - 1 cannot be stored
    c.token.mint(env.deployer, env.payer.address, 2**128)
    c.escrow.deposit(env.payer, 2**128 - 1)
    with reverts("UsageEscrowValueTooLarge", 0):
        c.escrow.deposit(env.payer, 1)


def test_signer_authorization(env, reverts):
    c = env.c
    c.escrow.authorize_signer(env.payer, env.signer.address)
    assert c.escrow.payer_of_signer(env.signer.address) == env.payer.address
    with reverts("UsageEscrowSignerTaken", env.signer.address, env.payer.address):
        c.escrow.authorize_signer(env.payer2, env.signer.address)
    with reverts("UsageEscrowZeroAddress"):
        c.escrow.authorize_signer(env.payer, "0x" + "00" * 20)
    with reverts("UsageEscrowNotYourSigner", env.signer.address):
        c.escrow.revoke_signer(env.payer2, env.signer.address)
    c.escrow.revoke_signer(env.payer, env.signer.address)
    assert c.escrow.payer_of_signer(env.signer.address) == "0x" + "00" * 20


def test_thaw_and_withdraw(env, anvil, reverts):
    c = env.c
    c.escrow.deposit(env.payer, 1000)
    with reverts("UsageEscrowNothingThawing", env.payer.address):
        c.escrow.withdraw(env.payer)
    with reverts("UsageEscrowZeroAmount"):
        c.escrow.start_thaw(env.payer, 0)
    with reverts("UsageEscrowInsufficientBalance", 1000, 1001):
        c.escrow.start_thaw(env.payer, 1001)
    c.escrow.start_thaw(env.payer, 400)
    acct = c.escrow.account_of(env.payer.address)
    assert acct.thawing == 400 and acct.thaw_end > 0
    # attack: withdrawal before the thawing period ends
    with reverts("UsageEscrowStillThawing", acct.thaw_end):
        c.escrow.withdraw(env.payer)
    env.mine_time(c.escrow.thaw_seconds(), anvil.rpc)
    before = c.token.balance_of(env.payer.address)
    c.escrow.withdraw(env.payer)
    assert c.token.balance_of(env.payer.address) == before + 400
    assert c.escrow.account_of(env.payer.address) == type(acct)(600, 0, 0)


def test_withdraw_capped_by_redemptions_during_thaw(env, world, anvil):
    c = env.c
    c.escrow.start_thaw(env.payer, 10**21)  # everything
    v = Voucher(env.payer.address, env.node.address, 0, 10**20, 0)
    c.escrow.redeem(env.node, [v], [signed(env, v)])  # the node still collects while thawing
    env.mine_time(c.escrow.thaw_seconds(), anvil.rpc)
    before = c.token.balance_of(env.payer.address)
    c.escrow.withdraw(env.payer)
    assert c.token.balance_of(env.payer.address) - before == 10**21 - 10**20
    assert c.escrow.account_of(env.payer.address).balance == 0


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
    assert c.datasets.pending_reward(2) == 3 * c.datasets.pending_reward(1) or abs(
        c.datasets.pending_reward(2) - 3 * c.datasets.pending_reward(1)
    ) <= 3
    assert c.escrow.account_of(env.payer.address).balance == 10**21 - compute - adapter
    assert c.escrow.collected(env.payer.address, env.node.address, 1) == type(c.escrow.collected(env.payer.address, env.node.address, 1))(compute, adapter)
    redeemed = [e for e in c.events_of(r) if isinstance(e, VoucherRedeemed)]
    assert [(e.compute_paid, e.adapter_paid) for e in redeemed] == [(compute, adapter)]
    assert c.token.balance_of(c.vault.address) == compute + adapter


def test_redeem_pays_only_the_increase_and_replay_pays_nothing(env, world):
    c = env.c
    v1 = Voucher(env.payer.address, env.node.address, 1, 100, 50)
    c.escrow.redeem(env.node, [v1], [signed(env, v1)])
    bal = c.escrow.account_of(env.payer.address).balance
    # replay: same voucher again pays nothing and does not revert
    r = c.escrow.redeem(env.node, [v1], [signed(env, v1)])
    assert c.escrow.account_of(env.payer.address).balance == bal
    assert not [e for e in c.events_of(r) if isinstance(e, VoucherRedeemed)]
    # a later voucher pays only the increase
    v2 = Voucher(env.payer.address, env.node.address, 1, 160, 80)
    c.escrow.redeem(env.node, [v2], [signed(env, v2)])
    assert c.escrow.account_of(env.payer.address).balance == bal - 60 - 30
    # attack: a lowered cumulative value pays nothing, and a partly lowered one only its higher part
    v_low = Voucher(env.payer.address, env.node.address, 1, 10, 10)
    c.escrow.redeem(env.node, [v_low], [signed(env, v_low)])
    v_mixed = Voucher(env.payer.address, env.node.address, 1, 150, 100)
    c.escrow.redeem(env.node, [v_mixed], [signed(env, v_mixed)])
    assert c.escrow.account_of(env.payer.address).balance == bal - 90 - 20
    col = c.escrow.collected(env.payer.address, env.node.address, 1)
    assert (col.compute, col.adapter) == (160, 100)


def test_redeem_many_lanes_in_one_call(env, world):
    c = env.c
    c.escrow.deposit(env.payer2, 10**20)
    vs = [
        Voucher(env.payer.address, env.node.address, 0, 11, 0),
        Voucher(env.payer.address, env.node.address, 1, 12, 13),
        Voucher(env.payer2.address, env.node.address, 1, 14, 15),
    ]
    sigs = [signed(env, vs[0]), signed(env, vs[1]), signed(env, vs[2], key=env.payer2.key)]
    c.escrow.redeem(env.node, vs, sigs)
    assert c.escrow.collected(env.payer2.address, env.node.address, 1).adapter == 15
    assert c.escrow.account_of(env.payer.address).balance == 10**21 - 36
    assert c.token.balance_of(c.vault.address) == 11 + 12 + 13 + 14 + 15


def test_authorized_signer_redeems_and_revoked_does_not(env, world, reverts):
    c = env.c
    c.escrow.authorize_signer(env.payer, env.signer.address)
    v = Voucher(env.payer.address, env.node.address, 1, 5, 5)
    c.escrow.redeem(env.node, [v], [signed(env, v, key=env.signer.key)])
    c.escrow.revoke_signer(env.payer, env.signer.address)
    v2 = Voucher(env.payer.address, env.node.address, 1, 9, 9)
    with reverts("UsageEscrowUnauthorizedSigner", 0, env.signer.address, env.payer.address):
        c.escrow.redeem(env.node, [v2], [signed(env, v2, key=env.signer.key)])


def test_unauthorized_signer_reverts(env, world, reverts):
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 10**18, 0)
    # attack: the node signs a voucher drawing on the payer's escrow
    with reverts("UsageEscrowUnauthorizedSigner", 0, env.node.address, env.payer.address):
        c.escrow.redeem(env.node, [v], [signed(env, v, key=env.node.key)])


@pytest.mark.parametrize("domain", ["chain", "contract"])
def test_voucher_for_another_domain_reverts(env, world, reverts, domain):
    """A voucher signed for another chain id or another escrow contract recovers to a random
    address, which is not authorized: it can never pay here."""
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 10**18, 0)
    if domain == "chain":
        sig = signed(env, v, chain_id=env.chain_id + 1)
    else:
        sig = signed(env, v, escrow=c.receipts.address)
    with pytest.raises(Exception) as ei:
        c.escrow.redeem(env.node, [v], [sig])
    assert ei.value.name == "UsageEscrowUnauthorizedSigner"
    assert ei.value.args[2] == env.payer.address and ei.value.args[1] != env.payer.address
    assert c.escrow.account_of(env.payer.address).balance == 10**21


def test_redeem_validation_errors(env, world, reverts):
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 1, 1)
    sig = signed(env, v)
    with reverts("UsageEscrowBadBatch", 0, 0):
        c.escrow.redeem(env.node, [], [])
    with reverts("UsageEscrowBadBatch", 1, 2):
        c.escrow.redeem(env.node, [v], [sig, sig])
    # a node cannot redeem a voucher naming another node
    with reverts("UsageEscrowNotVoucherNode", 0, env.node.address):
        c.escrow.redeem(env.stranger, [v], [sig])
    base = Voucher(env.payer.address, env.node.address, 0, 1, 1)
    with reverts("UsageEscrowAdapterValueForBaseModel", 0):
        c.escrow.redeem(env.node, [base], [signed(env, base)])
    unknown = Voucher(env.payer.address, env.node.address, 99, 1, 1)
    with reverts("UsageEscrowUnknownAdapter", 0, 99):
        c.escrow.redeem(env.node, [unknown], [signed(env, unknown)])
    huge = Voucher(env.payer.address, env.node.address, 1, 2**128, 0)
    with reverts("UsageEscrowValueTooLarge", 0):
        c.escrow.redeem(env.node, [huge], [signed(env, huge)])
    with reverts("ECDSAInvalidSignatureLength", 64):
        c.escrow.redeem(env.node, [v], [sig[:64]])
    bad_s = sig[:32] + (2**256 - 1).to_bytes(32, "big") + sig[64:]
    with reverts("ECDSAInvalidSignatureS"):
        c.escrow.redeem(env.node, [v], [bad_s])


def test_underfunded_voucher_pays_nothing(env, world):
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 10**21, 1)
    r = c.escrow.redeem(env.node, [v], [signed(env, v)])
    under = [e for e in c.events_of(r) if isinstance(e, VoucherUnderfunded)]
    assert [(e.needed, e.available) for e in under] == [(10**21 + 1, 10**21)]
    assert c.escrow.collected(env.payer.address, env.node.address, 1).compute == 0
    assert c.escrow.account_of(env.payer.address).balance == 10**21


def test_protocol_fee(env, world, reverts):
    c = env.c
    assert c.escrow.protocol_fee().bps == 500
    assert c.escrow.owner() == env.deployer.address
    with reverts("OwnableUnauthorizedAccount", env.stranger.address):
        c.escrow.set_protocol_fee(env.stranger, env.stranger.address, 10)
    with reverts("UsageEscrowFeeTooHigh", 1001):
        c.escrow.set_protocol_fee(env.deployer, env.stranger.address, 1001)
    with reverts("UsageEscrowZeroAddress"):
        c.escrow.set_protocol_fee(env.deployer, "0x" + "00" * 20, 10)
    c.escrow.set_protocol_fee(env.deployer, env.stranger.address, 1000)
    v = Voucher(env.payer.address, env.node.address, 1, 0, 10_000)
    c.escrow.redeem(env.node, [v], [signed(env, v)])
    assert c.vault.claimable(env.stranger.address) == 1000


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


def test_zero_payer_voucher_is_refused(env, world, reverts):
    """A voucher naming the zero address as payer must not pass as 'signed by an unregistered key'."""
    zero = "0x" + "00" * 20
    v = Voucher(zero, env.node.address, 0, 1, 0)
    with reverts("UsageEscrowUnauthorizedSigner", 0, env.stranger.address, zero):
        env.c.escrow.redeem(env.node, [v], [signed(env, v, key=env.stranger.key)])


def test_many_dataset_credits_in_one_call(env):
    """Two adapters with ten datasets each, three vouchers: 30 dataset credits in one redeem, more
    than the initial in-memory capacity (16) and beyond the merge window: every share still lands."""
    c = env.c
    for i in range(20):
        c.datasets.create_dataset(env.curator, f"d{i}", "MIT", "")
        c.datasets.contribute(env.contributor, i + 1, f"bafy{i}", 10)
        c.datasets.accept(env.curator, i + 1, 1)  # one contribution of weight 1 per dataset
    c.adapters.register(env.owner, "m", "bafyA", 8, 1, 5000, list(range(1, 11)), [500] * 10)
    c.adapters.register(env.owner, "m", "bafyB", 8, 1, 5000, list(range(11, 21)), [500] * 10)
    c.escrow.deposit(env.payer, 10**21)
    c.escrow.deposit(env.payer2, 10**21)
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

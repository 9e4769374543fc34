"""DatasetRegistry: datasets, contributions, curation and the reward-per-weight accumulator."""

from __future__ import annotations

from chain.contract_types import ContributionAccepted, ContributionSubmitted, DatasetCreated
from chain.eip712 import Voucher, sign_voucher

ZERO = "0x" + "00" * 20


def pay_dataset(env, adapter_value: int, compute: int = 0) -> None:
    """Redeem a voucher raising the (payer, node, adapter 1) lane's adapter value by `adapter_value`."""
    c = env.c
    col = c.escrow.collected(env.payer.address, env.node.address, 1)
    v = Voucher(env.payer.address, env.node.address, 1, col.compute + compute, col.adapter + adapter_value)
    c.escrow.redeem(env.node, [v], [sign_voucher(v, env.payer.key, env.chain_id, c.escrow.address)])
    env.settle_unattributed([1])  # no attribution: the dataset part goes to the accepted-weight split


def test_create_contribute_accept_reject_and_views(env):
    c = env.c
    r = c.datasets.create_dataset(env.curator, "wiki-it", "CC-BY-SA-4.0", "bafymeta")
    (ev,) = [e for e in c.events_of(r) if isinstance(e, DatasetCreated)]
    assert (ev.dataset_id, ev.curator, ev.name, ev.license, ev.metadata_cid) == (
        1,
        env.curator.address,
        "wiki-it",
        "CC-BY-SA-4.0",
        "bafymeta",
    )
    assert c.datasets.dataset_exists(1) and not c.datasets.dataset_exists(2)
    r = c.datasets.contribute(env.contributor, 1, "bafyc1", 1234)
    (ev,) = [e for e in c.events_of(r) if isinstance(e, ContributionSubmitted)]
    assert (ev.contribution_id, ev.dataset_id, ev.contributor, ev.cid, ev.size_tokens) == (
        1,
        1,
        env.contributor.address,
        "bafyc1",
        1234,
    )
    c.datasets.contribute(env.contributor2, 1, "bafyc2", 10)
    r = c.datasets.accept(env.curator, 1, 1234)
    (ev,) = [e for e in c.events_of(r) if isinstance(e, ContributionAccepted)]
    assert (ev.contribution_id, ev.weight) == (1, 1234)
    c.datasets.reject(env.curator, 2)
    assert c.datasets.get_contribution(1).status == "accepted"
    assert c.datasets.get_contribution(2).status == "rejected"
    d = c.datasets.get_dataset(1)
    assert (d.curator, d.total_weight, d.contribution_count, d.metadata_cid) == (env.curator.address, 1234, 2, "bafymeta")
    assert c.datasets.dataset_count() == 1 and c.datasets.contribution_count() == 2
    assert c.datasets.pending_reward(2) == 0  # rejected: never earns


def test_dataset_errors(env, reverts):
    c = env.c
    with reverts("DatasetRegistryInvalidString", "name"):
        c.datasets.create_dataset(env.curator, "", "MIT", "")
    with reverts("DatasetRegistryInvalidString", "license"):
        c.datasets.create_dataset(env.curator, "n", "x" * 257, "")
    with reverts("DatasetRegistryInvalidString", "metadataCid"):
        c.datasets.create_dataset(env.curator, "n", "MIT", "b" * 300)
    with reverts("DatasetRegistryUnknownDataset", 1):
        c.datasets.contribute(env.contributor, 1, "bafy", 1)
    with reverts("DatasetRegistryUnknownDataset", 7):
        c.datasets.get_dataset(7)
    c.datasets.create_dataset(env.curator, "n", "MIT", "")
    with reverts("DatasetRegistryInvalidString", "cid"):
        c.datasets.contribute(env.contributor, 1, "", 1)
    with reverts("DatasetRegistryInvalidSize", 0):
        c.datasets.contribute(env.contributor, 1, "bafy", 0)
    with reverts("DatasetRegistryInvalidSize", 2**64):
        c.datasets.contribute(env.contributor, 1, "bafy", 2**64)
    c.datasets.contribute(env.contributor, 1, "bafy", 5)
    with reverts("DatasetRegistryUnknownContribution", 9):
        c.datasets.accept(env.curator, 9, 1)
    with reverts("DatasetRegistryUnknownContribution", 9):
        c.datasets.get_contribution(9)
    with reverts("DatasetRegistryNotCurator", 1, env.contributor.address):
        c.datasets.accept(env.contributor, 1, 5)  # a contributor cannot accept its own work
    with reverts("DatasetRegistryNotCurator", 1, env.stranger.address):
        c.datasets.reject(env.stranger, 1)
    with reverts("DatasetRegistryInvalidWeight", 0):
        c.datasets.accept(env.curator, 1, 0)
    with reverts("DatasetRegistryInvalidWeight", 2**64):
        c.datasets.accept(env.curator, 1, 2**64)
    with reverts("DatasetRegistryNotAccepted", 1, 1):
        c.datasets.harvest(env.stranger, [1])
    with reverts("DatasetRegistryUnknownContribution", 5):
        c.datasets.harvest(env.stranger, [5])
    c.datasets.accept(env.curator, 1, 5)
    with reverts("DatasetRegistryNotPending", 1, 2):
        c.datasets.accept(env.curator, 1, 5)
    c.datasets.reject(env.curator, 1)  # an accepted contribution may be rejected later, once
    with reverts("DatasetRegistryNotPending", 1, 3):
        c.datasets.reject(env.curator, 1)
    with reverts("DatasetRegistryNotPool", env.stranger.address):
        env.c.datasets.distribute(env.stranger, [1], [100])
    with reverts("DatasetRegistryNotPool", env.stranger.address):
        env.c.datasets.pay_attributed(env.stranger, 1, 100, 1, [(1 << 224) | (1 << 128) | 1])


def test_dataset_id_cap(env, anvil, reverts):
    """Dataset ids are packed into 32 bits in adapter splits; creation stops at 2^32 - 1.
    (Reaching it for real takes 4 billion transactions: the counter is set with anvil.)"""
    anvil.rpc("anvil_setStorageAt", [env.c.datasets.address, "0x0", "0x" + (2**32 - 1).to_bytes(32, "big").hex()])
    with reverts("DatasetRegistryTooManyDatasets"):
        env.c.datasets.create_dataset(env.curator, "n", "MIT", "")


def test_rewards_split_by_weight_and_late_contribution_earns_nothing_before(env, world):
    c = env.c
    # world: contributions 1 (weight 1) and 2 (weight 3); adapter pays 40 % of the rest to dataset 1
    pay_dataset(env, 10**18)
    ds_share = (10**18 - 10**18 * 500 // 10_000) * 4000 // 10_000
    assert c.datasets.pending_reward(1) == ds_share // 4
    assert c.datasets.pending_reward(2) == ds_share * 3 // 4
    # a contribution accepted now gets nothing of what was paid already
    c.datasets.contribute(env.stranger, 1, "bafylate", 10)
    c.datasets.accept(env.curator, 3, 4)
    assert c.datasets.pending_reward(3) == 0
    pay_dataset(env, 10**18)
    assert c.datasets.pending_reward(3) == ds_share * 4 // 8
    assert c.datasets.pending_reward(1) == ds_share // 4 + ds_share // 8


def test_harvest_credits_vault_and_is_idempotent(env, world):
    c = env.c
    pay_dataset(env, 10**18)
    expect = c.datasets.pending_reward(1)
    c.datasets.harvest(env.stranger, [1, 2])  # anyone may trigger; money goes to the contributor
    assert c.vault.claimable(env.contributor.address) == expect
    assert c.datasets.pending_reward(1) == 0
    c.datasets.harvest(env.stranger, [1])  # nothing new: no credit, no revert
    assert c.vault.claimable(env.contributor.address) == expect
    before = c.token.balance_of(env.contributor.address)
    c.vault.claim(env.contributor)
    assert c.token.balance_of(env.contributor.address) == before + expect


def test_payment_to_dataset_without_weight_goes_to_curator(env, stake_node):
    c = env.c
    c.datasets.create_dataset(env.curator, "empty", "MIT", "")
    c.adapters.register(env.owner, "m", "bafyA", 4, 1, 5000, [1], [5000])
    stake_node(env, env.node)
    c.escrow.deposit(env.payer, env.node.address, 10**18)
    pay_dataset(env, 10_000)
    # fee 500, rest 9,500: half to the dataset (no weight yet) -> the curator
    assert c.vault.claimable(env.curator.address) == 4750
    assert c.vault.claimable(env.owner.address) == 4750

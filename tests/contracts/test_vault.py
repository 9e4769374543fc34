"""RewardVault: credits only from the two creditors, pull claims; constructor guards of the set."""

from __future__ import annotations

import pytest

from chain.artifacts import load_artifact
from chain.contract_types import Claimed
from chain.send import send_tx
from chain.eip712 import Voucher, sign_voucher

ZERO = "0x" + "00" * 20


def test_claim_pays_credit_once(env, world, reverts):
    c = env.c
    v = Voucher(env.payer.address, env.node.address, 1, 1000, 0)
    c.escrow.redeem(env.node, [v], [sign_voucher(v, env.payer.key, env.chain_id, c.escrow.address)])
    assert c.vault.claimable(env.node.address) == 1000
    assert c.vault.total_claimable() == 1000
    before = c.token.balance_of(env.node.address)
    r = c.vault.claim(env.node)
    assert [(e.account, e.amount) for e in c.events_of(r) if isinstance(e, Claimed)] == [(env.node.address, 1000)]
    assert c.token.balance_of(env.node.address) == before + 1000
    assert c.vault.claimable(env.node.address) == 0 and c.vault.total_claimable() == 0
    with reverts("RewardVaultNothingToClaim", env.node.address):
        c.vault.claim(env.node)


def test_only_creditors_credit(env, anvil, reverts):
    c = env.c
    with reverts("RewardVaultNotCreditor", env.stranger.address):
        c.vault.credit(env.stranger, [env.stranger.address], [10**18])
    # As the escrow itself (impersonated), mismatched arrays are refused; this cannot happen
    # through UsageEscrow's own code, hence the impersonation.
    esc = c.escrow.address
    anvil.rpc("anvil_impersonateAccount", [esc])
    anvil.rpc("anvil_setBalance", [esc, hex(10**18)])
    try:
        data = c.vault.contract.encode_abi("credit", args=[[env.stranger.address], [1, 2]])
        with pytest.raises(Exception) as ei:
            env.w3.eth.call({"from": esc, "to": c.vault.address, "data": data})
        from chain.reverts import as_revert

        err = as_revert(ei.value)
        assert err.name == "RewardVaultLengthMismatch" and err.args == (1, 2)
        data = c.datasets.contract.encode_abi("distribute", args=[[1], [1, 2]])
        with pytest.raises(Exception) as ei:  # the pool is the registry's only payer
            env.w3.eth.call({"from": c.pool.address, "to": c.datasets.address, "data": data})
        err = as_revert(ei.value)
        assert err.name == "DatasetRegistryLengthMismatch" and err.args == (1, 2)
    finally:
        anvil.rpc("anvil_stopImpersonatingAccount", [esc])


def _deploy_raw(env, name, *args):
    art = load_artifact(name)
    data = env.w3.eth.contract(abi=art.abi_list, bytecode=art.bytecode).constructor(*args).data_in_transaction
    return send_tx(env.w3, env.deployer, {"data": data, "value": 0, "chainId": env.chain_id})


@pytest.mark.parametrize(
    "name,args,error",
    [
        ("RewardVault", (ZERO, "0x" + "11" * 20, "0x" + "22" * 20), "RewardVaultZeroAddress"),
        ("RewardVault", ("0x" + "11" * 20, ZERO, "0x" + "22" * 20), "RewardVaultZeroAddress"),
        ("DatasetRegistry", (ZERO, "0x" + "22" * 20), "DatasetRegistryZeroAddress"),
        ("AdapterRegistry", (ZERO,), "AdapterRegistryZeroAddress"),
        ("NodeRegistry", (ZERO, 10, 1, "0x" + "11" * 20, "0x" + "11" * 20, 1, 1, "0x" + "11" * 20), "NodeRegistryZeroAddress"),
        ("NodeRegistry", ("0x" + "11" * 20, 10, 1, "0x" + "11" * 20, ZERO, 1, 1, "0x" + "11" * 20), "NodeRegistryZeroAddress"),
        ("NodeRegistry", ("0x" + "11" * 20, 10, 1, "0x" + "11" * 20, "0x" + "11" * 20, 1, 1, ZERO), "NodeRegistryZeroAddress"),
        ("NodeRegistry", ("0x" + "11" * 20, 10, 0) + ("0x" + "11" * 20,) * 2 + (1, 1, "0x" + "11" * 20), "NodeRegistryNoBond"),
        ("UsageEscrow", (ZERO,) + ("0x" + "11" * 20,) * 4 + (1, 0, "0x" + "11" * 20), "UsageEscrowZeroAddress"),
        ("UsageEscrow", ("0x" + "11" * 20,) * 4 + (ZERO, 1, 0, "0x" + "11" * 20), "UsageEscrowZeroAddress"),
        ("UsageEscrow", ("0x" + "11" * 20,) * 5 + (1, 1001, "0x" + "11" * 20), "UsageEscrowFeeTooHigh"),
    ],
)
def test_constructor_guards(env, reverts, name, args, error):
    with reverts(error):
        _deploy_raw(env, name, *args)

"""Re-entrancy through a hostile payment token: HookToken calls the recipient on every transfer,
and Reenterer (the recipient) tries to re-enter the paying contract. Every path that pays out
(vault claim, escrow withdraw, bond withdraw) must stop it and pay exactly once."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from chain.artifacts import load_artifact
from chain.send import send_tx
from chain.eip712 import Voucher, sign_voucher

REENTRANT = keccak(text="ReentrancyGuardReentrantCall()")[:4]


def _deploy(env, name, *args) -> str:
    art = load_artifact(name)
    data = env.w3.eth.contract(abi=art.abi_list, bytecode=art.bytecode).constructor(*args).data_in_transaction
    return send_tx(env.w3, env.deployer, {"data": data, "value": 0, "chainId": env.chain_id})["contractAddress"]


@pytest.fixture(scope="module")
def hook_env(anvil_session, request):
    snap = anvil_session.rpc("evm_snapshot")  # this module's deployments leave nothing behind
    make_env = request.getfixturevalue("make_env_fn")
    boot = make_env(anvil_session.url)  # plain deployment, only to get a funded Web3 and accounts
    hook = _deploy(boot, "HookToken")
    env = make_env(anvil_session.url, token=hook)
    for a in (env.payer, env.node, env.stranger):
        env.c.token.mint(env.stranger, a.address, 10**24)
        env.c.token.approve(a, env.c.escrow.address, 2**256 - 1)
        env.c.token.approve(a, env.c.nodes.address, 2**256 - 1)
    attacker = env.w3.eth.contract(address=_deploy(env, "Reenterer"), abi=load_artifact("Reenterer").abi_list)
    hook_c = env.w3.eth.contract(address=hook, abi=load_artifact("HookToken").abi_list)
    yield env, attacker, hook_c
    anvil_session.rpc("evm_revert", [snap])


@pytest.fixture
def hostile_env(hook_env, anvil):
    return hook_env


def _as_attacker(env, attacker, target, data: bytes | str):
    """Make the attacker contract call target(data); sent by the stranger."""
    tx = attacker.functions.exec(target, data).build_transaction({"from": env.stranger.address})
    return send_tx(env.w3, env.stranger, tx)


def _arm(env, attacker, target, data):
    send_tx(env.w3, env.stranger, attacker.functions.arm(target, data).build_transaction({"from": env.stranger.address}))


def _hook(env, hook_c, who):
    send_tx(env.w3, env.stranger, hook_c.functions.setHooked(who, True).build_transaction({"from": env.stranger.address}))


def _assert_blocked(attacker):
    assert attacker.functions.attempted().call()
    assert not attacker.functions.reentrySucceeded().call()
    assert bytes(attacker.functions.reentryError().call())[:4] == REENTRANT


def test_vault_claim_reentry_is_blocked(hostile_env, stake_node):
    env, attacker, hook_c = hostile_env
    c = env.c
    # the attacker contract owns an adapter and gets paid through it
    _as_attacker(
        env, attacker, c.adapters.address, c.adapters.contract.encode_abi("register", args=["m", "bafy", 8, 1, 10_000, [], []])
    )
    adapter_id = c.adapters.adapter_count()
    stake_node(env, env.node)
    c.escrow.deposit(env.payer, env.node.address, 10**6)
    v = Voucher(env.payer.address, env.node.address, adapter_id, 0, 10_000)
    c.escrow.redeem(env.node, [v], [sign_voucher(v, env.payer.key, env.chain_id, c.escrow.address)])
    credited = c.vault.claimable(attacker.address)
    assert credited == 9_500
    _hook(env, hook_c, attacker.address)
    claim = c.vault.contract.encode_abi("claim", args=[])
    _arm(env, attacker, c.vault.address, claim)
    _as_attacker(env, attacker, c.vault.address, claim)
    _assert_blocked(attacker)
    assert c.token.balance_of(attacker.address) == credited
    assert c.vault.claimable(attacker.address) == 0


@pytest.mark.parametrize("reentry", ["withdraw", "deposit", "redeem"])
def test_escrow_withdraw_reentry_is_blocked(hostile_env, anvil, reentry, stake_node):
    env, attacker, hook_c = hostile_env
    c = env.c
    c.token.mint(env.stranger, attacker.address, 1000)
    _as_attacker(env, attacker, c.token.address, c.token.contract.encode_abi("approve", args=[c.escrow.address, 2**255]))
    node = env.node.address
    stake_node(env, env.node)
    _as_attacker(env, attacker, c.escrow.address, c.escrow.contract.encode_abi("deposit", args=[node, 1000]))
    _as_attacker(env, attacker, c.escrow.address, c.escrow.contract.encode_abi("startThaw", args=[node, 1000]))
    env.mine_time(c.escrow.thaw_seconds(), anvil.rpc)
    data = {
        "withdraw": c.escrow.contract.encode_abi("withdraw", args=[node]),
        "deposit": c.escrow.contract.encode_abi("deposit", args=[node, 1]),
        "redeem": c.escrow.contract.encode_abi("redeem", args=[[(attacker.address, attacker.address, 0, 1, 0)], [b"\x00" * 65]]),
    }[reentry]
    _hook(env, hook_c, attacker.address)
    _arm(env, attacker, c.escrow.address, data)
    _as_attacker(env, attacker, c.escrow.address, c.escrow.contract.encode_abi("withdraw", args=[node]))
    _assert_blocked(attacker)
    assert c.token.balance_of(attacker.address) == 1000
    assert c.escrow.account_of(attacker.address, node).balance == 0


def test_bond_withdraw_reentry_is_blocked(hostile_env, anvil):
    env, attacker, hook_c = hostile_env
    c = env.c
    c.token.mint(env.stranger, attacker.address, 500)
    _as_attacker(env, attacker, c.token.address, c.token.contract.encode_abi("approve", args=[c.nodes.address, 500]))
    _as_attacker(env, attacker, c.nodes.address, c.nodes.contract.encode_abi("register", args=["https://evil", ["m"], 1, 500]))
    _as_attacker(env, attacker, c.nodes.address, c.nodes.contract.encode_abi("deregister", args=[]))
    env.mine_time(3600, anvil.rpc)
    withdraw = c.nodes.contract.encode_abi("withdrawBond", args=[])
    _hook(env, hook_c, attacker.address)
    _arm(env, attacker, c.nodes.address, withdraw)
    _as_attacker(env, attacker, c.nodes.address, withdraw)
    _assert_blocked(attacker)
    assert c.token.balance_of(attacker.address) == 500
    assert c.nodes.get_node(attacker.address).bond == 0

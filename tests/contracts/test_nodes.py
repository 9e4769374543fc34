"""NodeRegistry: registration, updates, bond and unbonding."""

from __future__ import annotations

from chain.contract_types import BondAdded, NodeRegistered


def test_register_update_bond_lifecycle(env, anvil, reverts):
    c = env.c
    r = c.nodes.register(env.node, "https://node.example", ["smollm2-135m"], 2000, bond=500)
    kinds = {type(e) for e in c.events_of(r)}
    assert NodeRegistered in kinds and BondAdded in kinds
    n = c.nodes.get_node(env.node.address)
    assert (n.endpoint, n.base_model_ids, n.compute_price_per_1k, n.bond, n.active) == (
        "https://node.example",
        ("smollm2-135m",),
        2000,
        500,
        True,
    )
    assert c.token.balance_of(c.nodes.address) == 500
    c.nodes.update(env.node, "https://n2.example", ["a", "b"], 3000)
    n = c.nodes.get_node(env.node.address)
    assert (n.endpoint, n.base_model_ids, n.compute_price_per_1k) == ("https://n2.example", ("a", "b"), 3000)
    c.nodes.add_bond(env.node, 250)
    assert c.nodes.get_node(env.node.address).bond == 750
    with reverts("NodeRegistryAlreadyRegistered", env.node.address):
        c.nodes.register(env.node, "https://x", ["m"], 1)
    with reverts("NodeRegistryStillActive", env.node.address):
        c.nodes.withdraw_bond(env.node)
    c.nodes.deregister(env.node)
    assert not c.nodes.is_active(env.node.address)
    unbond_at = c.nodes.get_node(env.node.address).unbond_at
    with reverts("NodeRegistryStillUnbonding", unbond_at):
        c.nodes.withdraw_bond(env.node)
    env.mine_time(3600, anvil.rpc)
    before = c.token.balance_of(env.node.address)
    c.nodes.withdraw_bond(env.node)
    assert c.token.balance_of(env.node.address) == before + 750
    with reverts("NodeRegistryNoBond", env.node.address):
        c.nodes.withdraw_bond(env.node)
    # re-registration after deregistering works
    c.nodes.register(env.node, "https://back.example", ["m"], 1)
    assert c.nodes.is_active(env.node.address)


def test_node_errors(env, reverts):
    c = env.c
    with reverts("NodeRegistryNotRegistered", env.stranger.address):
        c.nodes.update(env.stranger, "https://x", ["m"], 1)
    with reverts("NodeRegistryNotRegistered", env.stranger.address):
        c.nodes.add_bond(env.stranger, 1)
    with reverts("NodeRegistryNotRegistered", env.stranger.address):
        c.nodes.deregister(env.stranger)
    with reverts("NodeRegistryInvalidString", "endpoint"):
        c.nodes.register(env.node, "", ["m"], 1)
    with reverts("NodeRegistryInvalidString", "endpoint"):
        c.nodes.register(env.node, "h" * 257, ["m"], 1)
    with reverts("NodeRegistryInvalidBaseModels", 0):
        c.nodes.register(env.node, "https://x", [], 1)
    with reverts("NodeRegistryInvalidBaseModels", 17):
        c.nodes.register(env.node, "https://x", ["m"] * 17, 1)
    with reverts("NodeRegistryInvalidString", "baseModelId"):
        c.nodes.register(env.node, "https://x", ["m", ""], 1)
    c.nodes.register(env.node, "https://x", ["m"], 1)
    with reverts("NodeRegistryNoBond", env.node.address):
        c.nodes.add_bond(env.node, 0)
    assert c.nodes.get_node(env.stranger.address).active is False

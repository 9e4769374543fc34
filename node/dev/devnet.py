"""Dev-chain helpers (anvil only): fund a payer's escrow, authorize a signer. Used by the API
tests, the end-to-end test and `make bench-api`; they send real transactions to real contracts."""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from chain.contracts import Contracts
from chain.protocol import TOTAL_BPS, adapter_model_name


def fund_escrow(w3, deployment, deployer_key, payer_key, amount: int, node: str) -> None:
    """Mint `amount` demo tokens to the payer and deposit them into UsageEscrow, earmarked for `node`."""
    deployer, payer = Account.from_key(deployer_key), Account.from_key(payer_key)
    c = Contracts(w3, deployment)
    c.token.mint(deployer, payer.address, amount)
    c.token.approve(payer, c.escrow.address, amount)
    c.escrow.deposit(payer, node, amount)


def authorize_signer(w3, deployment, payer_key, signer_key) -> None:
    """The payer authorizes the key `signer_key`, with that key's proof (UsageEscrow.authorizeSigner)."""
    Contracts(w3, deployment).escrow.authorize_signer_key(Account.from_key(payer_key), signer_key)


def stake_node(
    w3,
    deployment,
    deployer_key,
    node_key,
    endpoint: str = "http://127.0.0.1:8080",
    base_models: tuple[str, ...] = ("smollm2-135m",),
    price_per_1k: int = 0,
) -> None:
    """Mint the minimum bond to the node and register it with that bond: it may redeem vouchers."""
    deployer, node = Account.from_key(deployer_key), Account.from_key(node_key)
    c = Contracts(w3, deployment)
    bond = c.nodes.dispute_terms().min_bond
    c.token.mint(deployer, node.address, bond)
    c.token.approve(node, c.nodes.address, bond)
    c.nodes.register(node, endpoint, list(base_models), price_per_1k, bond)


# ---- a node whose adapters are already "loaded" (API tests, bench-api) ----------------------------


def make_random_adapters(engine, folder, count: int, *, rank: int = 4, first_id: int = 1) -> dict[int, Path]:
    """`count` tiny random PEFT adapters for the engine's base model, registered with the engine as
    "adapter-<id>"; returns {adapter id: folder}."""
    from inference.adapter_factory import make_random_adapter

    out = {}
    for i in range(first_id, first_id + count):
        path = make_random_adapter(
            Path(folder) / adapter_model_name(i),
            engine.base.model.config,
            rank=rank,
            seed=i,
            base_model_id=engine.model_id,
            init_scale=0.05,
        )
        engine.register_adapter(adapter_model_name(i), path)
        out[i] = path
    return out


def seed_loaded_adapters(
    database_url: str, adapters: dict[int, tuple[str, int]], base_model_id: str, folders: dict | None = None
) -> None:
    """Adapter rows in state `loaded` ({id: (owner, price_per_1k)}): what the watcher and the
    lifecycle write after discovering and loading them on chain. For tests of the API alone."""
    from node.db import make_session_factory, migrate
    from node.db.models import Adapter, AdapterState

    migrate(database_url)
    sessions = make_session_factory(database_url)
    with sessions.begin() as s:
        for aid, (owner, price) in adapters.items():
            s.merge(
                Adapter(
                    id=aid,
                    owner=owner,
                    base_model=base_model_id,
                    cid=f"test-{aid}",
                    rank=4,
                    price_per_1k=price,
                    owner_bps=TOTAL_BPS,
                    dataset_splits=[],
                    block_number=0,
                    state=AdapterState.LOADED.value,
                    local_path=str(folders[aid]) if folders and aid in folders else None,
                )
            )
    sessions.kw["bind"].dispose()

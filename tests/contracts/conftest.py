"""Contract-test fixtures: the protocol deployed once per module on the session anvil inside a
module snapshot; each test runs inside the `anvil` fixture's snapshot, so state changes never leak
between tests or modules."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from chain.contracts import Contracts
from chain.errors import ContractRevert
from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS

FEE_BPS = 500
THAW_SECONDS = 3600
MINT = 10**24
MIN_BOND = 10**18
DISPUTE_WINDOW = 86_400
DISPUTE_DEPOSIT = 10**17


@dataclass
class Env:
    w3: Web3
    c: Contracts
    deployer: LocalAccount
    payer: LocalAccount
    payer2: LocalAccount
    node: LocalAccount
    owner: LocalAccount  # adapter owner
    curator: LocalAccount
    contributor: LocalAccount
    contributor2: LocalAccount
    signer: LocalAccount  # a key a payer may authorize
    stranger: LocalAccount

    @property
    def chain_id(self) -> int:
        return self.c.chain_id

    def mine_time(self, seconds: int, rpc) -> None:
        rpc("evm_increaseTime", [seconds])
        rpc("evm_mine")

    def settle_unattributed(self, dataset_ids, node: LocalAccount | None = None) -> None:
        """The node commits a (dummy) receipt batch and settles it naming only the datasets'
        unattributed weight: each pool drains into its dataset's accepted-weight split."""
        node = node or self.node
        c = self.c
        seq = c.receipts.last_seq(node.address) + 1
        c.receipts.commit_batch(node, seq, b"\x01" * 32, 1, "bafy-receipts")
        assert c.pool.settled_seq(node.address) == seq - 1, "settle the earlier batches first"
        c.pool.settle(node, seq, [(d, 0, 1) for d in sorted(set(dataset_ids))])


def make_env(url: str, **deploy_kwargs) -> Env:
    w3 = Web3(Web3.HTTPProvider(url))
    accts = [Account.from_key(k) for k in DEV_PRIVATE_KEYS]
    kwargs = {
        "protocol_fee_bps": FEE_BPS,
        "thaw_seconds": THAW_SECONDS,
        "min_bond": MIN_BOND,
        "dispute_window": DISPUTE_WINDOW,
        "dispute_deposit": DISPUTE_DEPOSIT,
        **deploy_kwargs,
    }
    dep = deploy(url, accts[0], out_dir=None, w3=w3, **kwargs)
    c = Contracts(w3, dep)
    env = Env(w3, c, *accts)
    if "token" not in deploy_kwargs:
        for a in (env.payer, env.payer2, env.node, env.owner, env.curator, env.contributor, env.contributor2, env.stranger):
            c.token.mint(env.deployer, a.address, MINT)
            c.token.approve(a, c.escrow.address, 2**256 - 1)
            c.token.approve(a, c.nodes.address, 2**256 - 1)
    return env


@pytest.fixture(scope="module")
def deployed(anvil_session) -> Env:
    """The protocol deployed for one module inside a module-wide snapshot (nothing leaks to other modules)."""
    snap = anvil_session.rpc("evm_snapshot")
    yield make_env(anvil_session.url)
    anvil_session.rpc("evm_revert", [snap])


@pytest.fixture
def env(deployed, anvil) -> Env:
    """The module's deployment, reverted after the test."""
    return deployed


@contextmanager
def _reverts(name: str, *args):
    """Expect a ContractRevert named `name` (and with `args`, when given)."""
    with pytest.raises(ContractRevert) as ei:
        yield ei
    assert ei.value.name == name, f"expected {name}, got {ei.value.name}{ei.value.args}"
    if args:
        assert ei.value.args == args, f"{name} args {ei.value.args} != {args}"


@pytest.fixture
def reverts():
    return _reverts


def stake(env: Env, node: LocalAccount, bond: int = MIN_BOND):
    """Register `node` with `bond` (at least the minimum by default): it may redeem."""
    return env.c.nodes.register(node, "https://node.example", ["smollm2-135m"], 2000, bond)


def setup_world(env: Env) -> dict:
    """One dataset with two accepted contributions (weights 1 and 3) and an adapter splitting
    60 % owner / 40 % that dataset; the node is registered with the minimum bond and the payer has
    10^21 deposited for it."""
    c = env.c
    c.datasets.create_dataset(env.curator, "wiki-it", "CC-BY-SA-4.0", "bafymeta")
    c.datasets.contribute(env.contributor, 1, "bafyc1", 100)
    c.datasets.contribute(env.contributor2, 1, "bafyc2", 300)
    c.datasets.accept(env.curator, 1, 1)
    c.datasets.accept(env.curator, 2, 3)
    c.adapters.register(env.owner, "smollm2-135m", "bafyadapter", 8, 10**15, 6000, [1], [4000])
    stake(env, env.node)
    c.escrow.deposit(env.payer, env.node.address, 10**21)
    return {"dataset": 1, "adapter": 1, "contributions": (1, 2)}


@pytest.fixture
def world(env) -> dict:
    return setup_world(env)


@pytest.fixture
def stake_node():
    """`stake_node(env, node, bond=MIN_BOND)`: register a node with a bond."""
    return stake


@pytest.fixture(scope="session")
def make_env_fn():
    """`make_env(url, **deploy_kwargs)` for modules that need their own deployment."""
    return make_env

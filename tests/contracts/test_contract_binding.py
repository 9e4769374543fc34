"""The ABI-driven binding: arguments checked against the ABI before anything is sent, and every
ABI function reachable by its snake_case name (no RPC needed: these fail before any request)."""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import Web3

from chain.artifacts import PROTOCOL_CONTRACTS
from chain.contracts import ContractBinding, UsageEscrowBinding, _indexed_abi, function_attr
from chain.eip712 import Voucher
from chain.errors import ChainError

ADDR = "0x" + "11" * 20
NODE = Web3.to_checksum_address("0x" + "22" * 20)


@pytest.fixture
def escrow() -> UsageEscrowBinding:
    return UsageEscrowBinding(Web3(), ADDR, "UsageEscrow")


def test_function_attr_names():
    assert function_attr("getAdapter") == "get_adapter"
    assert function_attr("MAX_PROTOCOL_FEE_BPS") == "max_protocol_fee_bps"
    assert function_attr("eip712Domain") == "eip712_domain"


@pytest.mark.parametrize("artifact", ["DemoToken", *PROTOCOL_CONTRACTS])
def test_no_function_is_shadowed_by_the_binding(artifact):
    own = {"w3", "address", "artifact", "contract"} | {a for a in dir(UsageEscrowBinding) if not a.startswith("__")}
    assert not own & set(_indexed_abi(artifact).attrs), f"{artifact} functions hidden by binding attributes"


def test_wrong_argument_count_names_the_signature(escrow):
    signature = r"UsageEscrow.deposit\(address node, uint256 amount\)"
    with pytest.raises(ChainError, match=signature + " takes 2 arguments, got 1"):
        escrow.build_deposit(NODE, 5)


def test_wrong_argument_type_is_refused(escrow):
    with pytest.raises(ChainError, match="argument amount: not a uint256: 'five'"):
        escrow.build_deposit(NODE, NODE, "five")
    with pytest.raises(ChainError, match="argument amount: not a uint256: -1"):
        escrow.build_deposit(NODE, NODE, -1)
    with pytest.raises(ChainError, match="expected a sequence"):
        escrow.build_redeem(NODE, Voucher(NODE, NODE, 1, 2, 3), [b"\x00" * 65])


def test_struct_arguments_come_from_dataclasses(escrow):
    v = Voucher(NODE, NODE, 1, 2, 3)
    escrow._chain_id = 31337  # what build would ask the RPC for
    tx = escrow.build_redeem(NODE, [v], ["0x" + "00" * 65])
    assert tx == {
        "from": NODE,
        "to": escrow.address,
        "chainId": 31337,
        "value": 0,
        "data": escrow.contract.encode_abi("redeem", args=[[(NODE, NODE, 1, 2, 3)], [b"\x00" * 65]]),
    }
    with pytest.raises(ChainError, match="expected 5 fields"):
        escrow.build_redeem(NODE, [(NODE, NODE, 1)], [b""])


def test_views_and_transactions_are_told_apart(escrow):
    with pytest.raises(AttributeError, match="view function"):
        escrow.build_account_of(NODE, NODE, NODE)
    with pytest.raises(ChainError, match="call it instead"):
        escrow.build(NODE, "accountOf", NODE, NODE)
    with pytest.raises(ChainError, match="first argument must be the signing account"):
        escrow.deposit(NODE, NODE, 1)
    with pytest.raises(AttributeError, match="UsageEscrow has no function for 'nothing'"):
        escrow.nothing()
    with pytest.raises(ChainError, match="has no function 'nothing'"):
        escrow.call("nothing")


def test_sender_may_be_an_account(escrow):
    escrow._chain_id = 31337
    acct = Account.create()
    assert escrow.build_deposit(acct, NODE, 1)["from"] == acct.address
    vault = ContractBinding(Web3(), ADDR, "RewardVault")
    vault._chain_id = 31337
    assert vault.build_claim(NODE)["data"] == vault.contract.encode_abi("claim", args=[])


def test_arguments_by_name_and_optional_ones():
    nodes = ContractBinding(Web3(), ADDR, "NodeRegistry")
    nodes._chain_id = 31337
    data = nodes.contract.encode_abi("register", args=["https://n", ["m"], 7, 0])
    assert nodes.build_register(NODE, "https://n", ["m"], 7)["data"] == data  # bond left out: 0
    assert nodes.build_register(NODE, "https://n", ["m"], compute_price_per_1k=7, bond=0)["data"] == data
    with pytest.raises(ChainError, match=r"unknown or repeated: \['bnod'\]"):
        nodes.build_register(NODE, "https://n", ["m"], 7, bnod=1)
    with pytest.raises(ChainError, match=r"unknown or repeated: \['endpoint'\]"):
        nodes.build_register(NODE, "https://n", ["m"], 7, endpoint="x")

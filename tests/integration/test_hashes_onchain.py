"""Python EIP-712 and Merkle code against the deployed contracts on anvil, byte for byte.

- digests: chain.eip712 == UsageEscrow.hashVoucher / ReceiptLog.hashReceipt for random inputs;
- signatures: a voucher signed in Python redeems in UsageEscrow; tampered or malleable ones don't;
- Merkle: a chain.merkle tree's root committed with ReceiptLog.commitBatch (through the outbox)
  verifies every receipt with ReceiptLog.verifyReceipt, and rejects tampered ones.
"""

from __future__ import annotations

import random

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import Web3

from chain.artifacts import artifacts_dir, load_artifact
from chain.devchain import DEV_PRIVATE_KEYS, Anvil
from chain.eip712 import (
    SECP256K1_N,
    Receipt,
    Voucher,
    attribution_hash,
    output_hash,
    receipt_digest,
    sign_voucher,
    voucher_digest,
)
from chain.merkle import StandardMerkleTree
from chain.outbox import InMemoryOutboxStore, IntentStatus, Outbox

_NEEDED = ("UsageEscrow", "ReceiptLog", "DemoToken")
_missing = [n for n in _NEEDED if not list((artifacts_dir() / "contracts").rglob(f"{n}.json"))]
if _missing:
    pytest.skip(f"contract artifacts {_missing} not built (run `make build`)", allow_module_level=True)

from chain.deploy import deploy  # noqa: E402  (imported once the artifacts are known to exist)

DEPLOYER = Account.from_key(DEV_PRIVATE_KEYS[0])
PAYER = Account.from_key(DEV_PRIVATE_KEYS[5])
NODE = Account.from_key(DEV_PRIVATE_KEYS[6])
STRANGER = Account.from_key(DEV_PRIVATE_KEYS[7])


@pytest.fixture(scope="module")
def chain():
    """A private anvil with the whole contract set deployed once for this module."""
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        dep = deploy(node.url, DEPLOYER, out_dir=None, w3=w3)
        escrow = w3.eth.contract(address=dep.addresses["UsageEscrow"], abi=load_artifact("UsageEscrow").abi_list)
        log = w3.eth.contract(address=dep.addresses["ReceiptLog"], abi=load_artifact("ReceiptLog").abi_list)
        token = w3.eth.contract(address=dep.addresses["PaymentToken"], abi=load_artifact("DemoToken").abi_list)
        yield dict(w3=w3, chain_id=w3.eth.chain_id, escrow=escrow, log=log, token=token, anvil=node)


def send(chain, account, fn) -> None:
    """Send one contract call through the outbox and wait for it to be mined."""
    ob = Outbox(chain["w3"], account, InMemoryOutboxStore())
    tx = {"to": fn.address, "data": fn._encode_transaction_data()}
    (row,) = ob.run_until_idle(ids=[ob.enqueue("tx", tx)], timeout=30)
    assert row.status == IntentStatus.MINED, row.error


addresses = st.binary(min_size=20, max_size=20).map(Web3.to_checksum_address)
u256 = st.integers(0, 2**256 - 1)
b32 = st.binary(min_size=32, max_size=32)
vouchers = st.builds(Voucher, addresses, addresses, u256, u256, u256)
receipts = st.builds(
    Receipt,
    b32,
    addresses,
    addresses,
    u256,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    u256,
    u256,
    b32,
    b32,
    st.integers(0, 2**64 - 1),
)
_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(v=vouchers)
def test_voucher_digest_equals_contract(chain, v):
    onchain = chain["escrow"].functions.hashVoucher(tuple(v.message().values())).call()
    assert voucher_digest(v, chain["chain_id"], chain["escrow"].address) == bytes(onchain)


@_settings
@given(r=receipts)
def test_receipt_digest_equals_contract(chain, r):
    onchain = chain["log"].functions.hashReceipt(tuple(r.message().values())).call()
    assert receipt_digest(r, chain["chain_id"], chain["log"].address) == bytes(onchain)


def test_python_signed_voucher_redeems_on_chain(chain):
    w3, escrow, token, cid = chain["w3"], chain["escrow"], chain["token"], chain["chain_id"]
    nodes = w3.eth.contract(address=escrow.functions.peers().call()[4], abi=load_artifact("NodeRegistry").abi_list)
    bond = nodes.functions.disputeTerms().call()[0]
    send(chain, DEPLOYER, token.functions.mint(PAYER.address, 10**6))
    send(chain, DEPLOYER, token.functions.mint(NODE.address, bond))
    send(chain, NODE, token.functions.approve(nodes.address, bond))
    send(chain, NODE, nodes.functions.register("http://127.0.0.1:8080", ["m"], 1, bond))  # only staked nodes redeem
    send(chain, PAYER, token.functions.approve(escrow.address, 10**6))
    send(chain, PAYER, escrow.functions.deposit(NODE.address, 10**6))
    v = Voucher(PAYER.address, NODE.address, 0, 1234, 0)  # base-model lane
    sig = sign_voucher(v, PAYER, cid, escrow.address)
    redeem = escrow.functions.redeem([tuple(v.message().values())], [sig])

    # the contract recovers the same signer as Python: redeeming pays exactly the voucher
    send(chain, NODE, redeem)
    assert escrow.functions.collected(PAYER.address, NODE.address, 0).call() == [1234, 0]

    # a signature by a key the payer never authorized, for another chain id, or the malleable twin
    # (which chain.eip712.check_signature refuses) pays nothing on chain either (the voucher is skipped)
    v2 = Voucher(PAYER.address, NODE.address, 0, 2000, 0)
    good = sign_voucher(v2, PAYER, cid, escrow.address)
    s = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - good[64]])
    for bad in (sign_voucher(v2, STRANGER, cid, escrow.address), sign_voucher(v2, PAYER, cid + 1, escrow.address), twin):
        assert escrow.functions.redeem([tuple(v2.message().values())], [bad]).call({"from": NODE.address}) == 0
    assert escrow.functions.redeem([tuple(v2.message().values())], [good]).call({"from": NODE.address}) == 2000 - 1234


def make_receipts(rng: random.Random, n: int, first_seq: int) -> list[Receipt]:
    return [
        Receipt(
            request_id=rng.randbytes(32),
            payer=PAYER.address,
            node=NODE.address,
            adapter_id=rng.randrange(0, 5),
            seq=first_seq + i,
            prompt_tokens=rng.randrange(1, 4000),
            completion_tokens=rng.randrange(1, 4000),
            compute_cost=rng.randrange(0, 10**9),
            adapter_cost=rng.randrange(0, 10**9),
            output_hash=output_hash(f"completion {i}"),
            attribution_hash=attribution_hash([1, 2 + i], [300, 200]),
            timestamp=1_700_000_000 + i,
        )
        for i in range(n)
    ]


def test_merkle_proofs_verify_after_commit_batch(chain):
    log, cid = chain["log"], chain["chain_id"]
    rng = random.Random(11)
    batches = [make_receipts(rng, 1, 1), make_receipts(rng, 37, 2)]
    start = log.functions.lastSeq(NODE.address).call()
    trees = []
    for k, batch in enumerate(batches, start=start + 1):
        tree = StandardMerkleTree.of([[receipt_digest(r, cid, log.address)] for r in batch], ["bytes32"])
        send(chain, NODE, log.functions.commitBatch(k, tree.root, len(batch), f"bafy-batch-{k}"))
        assert bytes(log.functions.batchRoot(NODE.address, k).call()) == tree.root
        trees.append((k, tree))

    for (k, tree), batch in zip(trees, batches, strict=True):
        for i, r in enumerate(batch):
            assert log.functions.verifyReceipt(tuple(r.message().values()), k, tree.proof(i)).call()

    k, tree = trees[1]
    r = batches[1][5]
    proof = tree.proof(5)
    tampered = Receipt(**{**r.__dict__, "completion_tokens": r.completion_tokens + 1})
    assert not log.functions.verifyReceipt(tuple(tampered.message().values()), k, proof).call()
    assert not log.functions.verifyReceipt(tuple(r.message().values()), k - 1, proof).call()  # wrong batch
    assert not log.functions.verifyReceipt(tuple(r.message().values()), k, tree.proof(6)).call()  # wrong proof
    assert not log.functions.verifyReceipt(tuple(r.message().values()), k + 5, proof).call()  # no such batch

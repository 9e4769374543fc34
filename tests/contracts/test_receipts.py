"""ReceiptLog: batch sequencing, receipt hashing (== Python) and Merkle inclusion proofs."""

from __future__ import annotations

import random

from eth_account import Account

from chain.contract_types import BatchCommitted
from chain.eip712 import Receipt, attribution_hash, output_hash, receipt_digest
from chain.merkle import StandardMerkleTree


def random_receipt(rng: random.Random, node: str, seq: int) -> Receipt:
    return Receipt(
        request_id=rng.randbytes(32),
        payer=Account.from_key(rng.randbytes(32)).address,
        node=node,
        adapter_id=rng.choice([0, 1, rng.getrandbits(256)]),
        seq=seq,
        prompt_tokens=rng.getrandbits(32),
        completion_tokens=rng.getrandbits(rng.choice([8, 32])),
        compute_cost=rng.getrandbits(rng.choice([1, 128, 256])),
        adapter_cost=rng.getrandbits(rng.choice([1, 128, 256])),
        output_hash=output_hash("réponse " + str(rng.random())),
        attribution_hash=attribution_hash([3, 9], [100, 2500]) if rng.random() < 0.5 else attribution_hash([], []),
        timestamp=rng.getrandbits(64),
    )


def test_hash_receipt_matches_python(env):
    rng = random.Random(99)
    for i in range(12):
        r = random_receipt(rng, env.node.address, i + 1)
        assert env.c.receipts.hash_receipt(r) == receipt_digest(r, env.chain_id, env.c.receipts.address)


def test_commit_batches_in_sequence_and_verify(env, reverts):
    c = env.c
    rng = random.Random(5)
    receipts = [random_receipt(rng, env.node.address, i + 1) for i in range(7)]
    tree = StandardMerkleTree.of([(receipt_digest(r, env.chain_id, c.receipts.address),) for r in receipts], ["bytes32"])
    tx = c.receipts.commit_batch(env.node, 1, tree.root, 7, "bafyreceipts1")
    (ev,) = [e for e in c.events_of(tx) if isinstance(e, BatchCommitted)]
    assert (ev.node, ev.seq, ev.root, ev.count, ev.receipts_cid) == (env.node.address, 1, tree.root, 7, "bafyreceipts1")
    assert c.receipts.last_seq(env.node.address) == 1
    assert c.receipts.batch_root(env.node.address, 1) == tree.root
    for i, r in enumerate(receipts):
        assert c.receipts.verify_receipt(r, 1, tree.proof(i))
    # a tampered receipt, a wrong batch, another node's batch or a wrong proof do not verify
    forged = Receipt(**{**receipts[0].__dict__, "compute_cost": receipts[0].compute_cost + 1})
    assert not c.receipts.verify_receipt(forged, 1, tree.proof(0))
    assert not c.receipts.verify_receipt(receipts[0], 2, tree.proof(0))
    assert not c.receipts.verify_receipt(receipts[0], 1, tree.proof(1))
    other = Receipt(**{**receipts[0].__dict__, "node": env.stranger.address})
    assert not c.receipts.verify_receipt(other, 1, tree.proof(0))
    # attack: the same batch sequence twice, or skipping one
    with reverts("ReceiptLogWrongSequence", 2, 1):
        c.receipts.commit_batch(env.node, 1, tree.root, 7, "bafyreceipts1")
    with reverts("ReceiptLogWrongSequence", 2, 3):
        c.receipts.commit_batch(env.node, 3, tree.root, 7, "bafy")
    c.receipts.commit_batch(env.node, 2, b"\x01" * 32, 1, "bafy2")
    # sequences are per node
    c.receipts.commit_batch(env.stranger, 1, b"\x02" * 32, 1, "bafy")
    assert c.receipts.last_seq(env.stranger.address) == 1


def test_single_receipt_batch_has_empty_proof(env):
    c = env.c
    r = random_receipt(random.Random(1), env.node.address, 1)
    tree = StandardMerkleTree.of([(receipt_digest(r, env.chain_id, c.receipts.address),)], ["bytes32"])
    c.receipts.commit_batch(env.node, 1, tree.root, 1, "bafy")
    assert tree.proof(0) == []
    assert c.receipts.verify_receipt(r, 1, [])


def test_commit_errors(env, reverts):
    c = env.c
    with reverts("ReceiptLogEmptyBatch"):
        c.receipts.commit_batch(env.node, 1, b"\x00" * 32, 1, "bafy")
    with reverts("ReceiptLogEmptyBatch"):
        c.receipts.commit_batch(env.node, 1, b"\x01" * 32, 0, "bafy")
    with reverts("ReceiptLogInvalidCid"):
        c.receipts.commit_batch(env.node, 1, b"\x01" * 32, 1, "")
    with reverts("ReceiptLogInvalidCid"):
        c.receipts.commit_batch(env.node, 1, b"\x01" * 32, 1, "b" * 257)
    with reverts("ReceiptLogWrongSequence", 1, 0):
        c.receipts.commit_batch(env.node, 0, b"\x01" * 32, 1, "bafy")
